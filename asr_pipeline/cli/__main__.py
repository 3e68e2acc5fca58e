"""`python -m asr_pipeline.cli`: the same main() as the `asr-pipeline` console script."""

from asr_pipeline.cli.parser import main

main()
