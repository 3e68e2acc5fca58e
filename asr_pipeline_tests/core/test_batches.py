"""The retry schedule of failed ingest batches: quick retries first, then waits that double up to a day."""

from asr_pipeline.core.batches import FREE_RETRIES, MAX_RETRY_BACKOFF_S, RETRY_BACKOFF_S, retry_due

HOUR = 3600.0


def _wait(failures: int, free_retries: int = FREE_RETRIES) -> float:
    failed_at = 1_000_000.0
    due = retry_due(failures, failed_at, now=failed_at, free_retries=free_retries)
    return 0.0 if due is None else due - failed_at


def test_the_first_failures_are_retried_at_once():
    assert [_wait(n) for n in range(FREE_RETRIES)] == [0.0] * FREE_RETRIES


def test_later_waits_double_from_an_hour_to_a_day():
    waits = [_wait(n) / HOUR for n in range(FREE_RETRIES, FREE_RETRIES + 8)]
    assert RETRY_BACKOFF_S == HOUR and MAX_RETRY_BACKOFF_S == 24 * HOUR
    assert waits == [1, 2, 4, 8, 16, 24, 24, 24]


def test_a_blocked_batch_waits_an_hour_after_its_first_failure():
    assert [_wait(n, free_retries=0) / HOUR for n in (1, 2, 3)] == [1, 2, 4]


def test_a_year_of_failures_costs_a_bounded_number_of_attempts():
    """A batch that fails every time, checked every minute for a year: about one attempt a day, not 24."""
    failures, last_failure, attempts = 0, None, 0
    for minute in range(365 * 24 * 60):
        now = minute * 60.0
        if retry_due(failures, last_failure, now) is None:
            attempts += 1
            failures, last_failure = failures + 1, now  # and it fails again
    assert 365 <= attempts <= 365 + FREE_RETRIES + 6


def test_due_when_the_wait_is_over():
    assert retry_due(FREE_RETRIES, 0.0, now=HOUR) is None
    assert retry_due(FREE_RETRIES, 0.0, now=HOUR - 1) == HOUR
    assert retry_due(FREE_RETRIES, None, now=0.0) is None  # no failure time recorded: at once


def test_a_batch_key_is_ten_digit_ids_or_refused():
    import pytest

    from asr_pipeline.core.batches import MAX_ROW_ID, batch_key, parse_batch_key

    assert parse_batch_key(batch_key(1, MAX_ROW_ID)) == (1, MAX_ROW_ID)
    with pytest.raises(ValueError, match="ten digits"):
        batch_key(MAX_ROW_ID, MAX_ROW_ID + 1)  # would register a key no later tick could parse
