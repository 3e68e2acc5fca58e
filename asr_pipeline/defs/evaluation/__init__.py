"""A checkpoint to a decision: evaluation_report, champion_model and the promotion gate."""
