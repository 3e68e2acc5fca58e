"""`python -m asr_pipeline.cli`: what the `asr-pipeline` console script runs."""

from asr_pipeline.cli.parser import main

main()
