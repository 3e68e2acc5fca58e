import jiwer
import pytest

from asr_pipeline.core.text import error_rates, normalize_for_cer


def test_normalisation_removes_punctuation_and_whitespace_only():
    assert normalize_for_cer("저는, 최인호 검사입니다!  (서울)") == "저는최인호검사입니다서울"
    assert normalize_for_cer("「뉴스」 9시…") == "뉴스9시"
    assert normalize_for_cer("ABC 123") == "ABC123"


def test_cer_counts_spaces_and_agrees_with_jiwer():
    refs = ["오늘 날씨가 좋습니다.", "서울 지역에 비가 옵니다"]
    hyps = ["오늘날씨가 좋습니다", "서울 지역에 눈이 옵니다"]
    rates = error_rates(refs, hyps)
    assert rates.cer == pytest.approx(jiwer.cer(refs, hyps))
    assert rates.wer == pytest.approx(jiwer.wer(refs, hyps))
    # a missing space is an error in the raw CER but not in the normalised one
    spacing_only = error_rates(["오늘 날씨"], ["오늘날씨"])
    assert spacing_only.cer == pytest.approx(1 / 5)
    assert spacing_only.cer_normalized == 0.0


def test_normalised_cer_is_jiwer_on_normalised_strings():
    refs, hyps = ["저는, 검사입니다.", "네!"], ["저는 검사 입니다", "예"]
    expected = jiwer.cer([normalize_for_cer(r) for r in refs], [normalize_for_cer(h) for h in hyps])
    assert error_rates(refs, hyps).cer_normalized == pytest.approx(expected)


def test_empty_hypotheses_are_full_deletions_and_empty_references_are_refused():
    assert error_rates(["가나다"], [""]).cer == 1.0
    with pytest.raises(ValueError):
        error_rates(["   "], ["가"])
