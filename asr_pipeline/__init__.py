"""asr_pipeline: fine-tune OpenAI Whisper for Korean speech recognition from a transcript database.

`asr_pipeline.core` is plain Python (no Dagster) and can be imported from a notebook;
`asr_pipeline.defs` wires it into Dagster assets, resources and IO managers.
"""

__version__ = "0.1.0"
