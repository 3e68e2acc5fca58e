import jiwer
import pytest

import numpy as np

from asr_pipeline.core.errors import ConfigError
from asr_pipeline.core.korean_numbers import numbers_to_digits, numbers_to_korean, parse_sino_korean, sino_korean
from asr_pipeline.core.text import NormalizationPolicy, bootstrap_ci, edit_counts, error_rates, normalize_for_cer


def test_normalisation_removes_punctuation_and_whitespace_only():
    assert normalize_for_cer("저는, 최인호 검사입니다!  (서울)") == "저는최인호검사입니다서울"
    assert normalize_for_cer("「뉴스」 9시…") == "뉴스아홉시"  # numbers are read out (the default policy)
    assert normalize_for_cer("ABC 123", NormalizationPolicy(numbers="keep")) == "ABC123"


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


@pytest.mark.parametrize("written, read", [
    ("0.1%", "영 점 일 프로"), ("금리 0.1% 인상", "금리 영 점 일 프로 인상"), ("1,500원", "천오백 원"),
    ("12345", "만 이천삼백사십오"), ("2026년", "이천이십육 년"), ("-3.5도", "마이너스 삼 점 오 도"),
    ("3시 뉴스", "세 시 뉴스"), ("20명", "스무 명"), ("32살", "서른두 살"), ("10퍼센트", "십 프로"),
    ("100", "백"), ("0", "영"), ("110000", "십일만"), ("007", "영 영 칠"), ("0.05", "영 점 영 오"),
    ("요원 007", "요원 영 영 칠"), ("010-1234", "영 일 영 - 천이백삼십사"), ("02-123", "영 이 - 백이십삼"),
    ("B01", "B 영 일"), ("제05호", "제 영 오 호"), ("2024년 01월 05일", "이천이십사 년 일 월 오 일"),
    ("오전 09시 05분", "오전 아홉 시 오 분"), ("00시", "영 시"), ("09:05", "구 : 오"), ("05 초", "오 초"),
    ("09 : 05", "구 : 오"), ("2026-01-05", "이천이십육 - 일 - 오"), ("04-28", "사 - 이십팔"), ("01/05", "일 / 오"),
    ("3333-01-1234567", "삼천삼백삼십삼 - 영 일 - 백이십삼만 사천오백육십칠"), ("01-05-2026", "일 - 오 - 이천이십육"),
    ("12/01/2026", "십이 / 일 / 이천이십육"), ("A-01", "A- 영 일"), ("KTX-1 열차", "KTX- 일 열차"),
    ("기온 -5도", "기온 마이너스 오 도"), ("(-3)", "( 마이너스 삼 )"), ("3-5명", "삼 - 다섯 명"),
    ("2026.01.05", "이천이십육 . 일 . 오"), ("2026.01.05.", "이천이십육 . 일 . 오 ."),
    ("2026. 1. 5.", "이천이십육 . 일 . 오 ."), ("26.01.05 방송", "이십육 . 일 . 오 방송"),
    ("192.168.0.1", "백구십이 점 백육십팔 점 영 점 일"), ("버전 3.1.2", "버전 삼 점 일 점 이"),
    ("10.01.001", "십 점 영 일 점 영 영 일"), ("1.5.", "일 점 오 ."), ("2026.1.5-7", "이천이십육 . 일 . 오 - 칠"),
    ("v1.2.3-4", "v 일 점 이 점 삼 - 사"), ("2026. 01. 05.", "이천이십육 . 일 . 오 ."),
    ("2026.13.05", "이천이십육 점 십삼 점 영 오"), ("영하 -5도", "영하 오 도"), ("영하-5도", "영하- 오 도"),
    ("11.5. 20일", "십일 점 오 . 이십 일"), ("기간 -2026.1.5까지", "기간 - 이천이십육 . 일 . 오 까지"),
    ("2026.1.1 -2026.1.5", "이천이십육 . 일 . 일 - 이천이십육 . 일 . 오"), ("(-3.1.2)", "(- 삼 점 일 점 이 )"),
    ("3%-5%", "삼 프로 - 오 프로"), ("x=-3", "x= 마이너스 삼"), ("iOS 17.1.2", "iOS 십칠 점 일 점 이"),
    ("2026.01.05~07", "이천이십육 . 일 . 오 ~ 칠"), ("서울-3도", "서울- 삼 도"), ("“-5도”", "“ 마이너스 오 도”"),
    ("-5/-10", "마이너스 오 / 마이너스 십"), ("「-5도」", "「 마이너스 오 도」"), ("강수량 30㎜-80㎜", "강수량 삼십 ㎜- 팔십 ㎜"),
    ("《시사기획 창》-2부", "《시사기획 창》- 이 부"), ("“서울”-3도", "“서울”- 삼 도"), ("그러니까--3년 전", "그러니까-- 삼 년 전"),
])
def test_digits_are_read_the_way_announcers_say_them(written, read):
    assert " ".join(numbers_to_korean(written).split()) == read


@pytest.mark.parametrize("n", [10, 11, 19, 20, 99, 100, 101, 999, 1000, 1001, 9999, 10000, 10001, 12345, 20000,
                               99999999, 100000000, 123456789012, 10**16 + 7])
def test_sino_korean_readings_parse_back_to_the_number(n):
    assert numbers_to_digits(sino_korean(n)) == str(n)


def test_numbers_past_kyeong_are_read_digit_by_digit_and_never_break_scoring():
    """Past 10^20 (경's groups) a number is read digit by digit; a decoder looping on digits ("2020202020...")
    writes such runs, and scoring them once crashed the whole evaluation and the training's validation."""
    assert sino_korean(10**20 - 1).startswith("구천구백구십구경")
    assert sino_korean(10**20) == "일 " + " ".join(["영"] * 20)
    loop = "2020" * 12
    for text in (loop, "1,000,000,000,000,000,000,000", f"{loop}년 {loop}.5%"):
        for numbers in ("korean", "digits", "keep"):
            rates = error_rates(["이천이십 년"], [text], NormalizationPolicy(numbers=numbers))
            assert 0 < rates.cer_normalized < 100
    assert " ".join(numbers_to_korean("3" * 21).split()) == " ".join(["삼"] * 21)
    assert " ".join(numbers_to_korean("0" * 20 + "12").split()) == " ".join(["영"] * 20 + ["일", "이"])
    assert error_rates(["안녕"], ["1" * 5000]).cer_normalized > 1  # past Python's int() digit limit too


@pytest.mark.parametrize("numbers", ["korean", "digits", "keep"])
def test_the_minus_sign_the_en_dash_and_other_hyphens_are_a_hyphen_under_every_numbers_policy(numbers):
    policy = NormalizationPolicy(numbers=numbers)
    assert policy.words("기온 \u22125도") == policy.words("기온 \uff0d5도") == policy.words("기온 -5도")
    for dash in "\u2010\u2011\u2013":  # hyphen, non-breaking hyphen, en dash: as written for a minus or a range
        assert policy.words(f"기온 {dash}5도") == policy.words("기온 -5도")
        assert policy.words(f"09{dash}18시, 3{dash}5도") == policy.words("09-18시, 3-5도")
    if numbers == "korean":
        assert policy.words("기온 \u22125도") == "기온 마이너스 오 도"


def test_reading_numbers_takes_time_in_proportion_to_the_text():
    """A decoder looping on "01-01-..." or digits writes long runs; each number looks only at its neighbours."""
    import time

    for text in ("01-" * 7000, "01 " * 7000, "7" * 8000 + " 01", "1.1." * 8000, "2026. 1. " * 5000,
                 "-" + "1." * 10000, "-1.1" * 8000, "2026.1.5-" * 4000):
        started = time.perf_counter()
        numbers_to_korean(text)
        assert time.perf_counter() - started < 0.5, text[:10]  # 2.2 s with a search over the whole prefix


def test_invisible_format_characters_count_for_nothing_in_the_normalised_scores():
    """A caption exported with zero-width spaces or a byte-order mark: characters the model never writes."""
    ref, hyp = "\ufeff금리를 1\u200b500원 \u200b올렸다", "금리를 천오백 원 올렸다"
    rates = error_rates([ref], [hyp])
    assert rates.cer_normalized == 0.0 and rates.wer_normalized == 0.0
    assert rates.cer > 0  # the raw CER compares the texts as written


def test_readings_become_digits_but_ordinary_words_stay_words():
    assert numbers_to_digits("금리는 영 점 일 퍼센트 올랐다") == "금리는 0.1% 올랐다"
    assert numbers_to_digits("삼백 명이 왔다") == "300 명이 왔다"
    # 이 (this), 사 (four / a word), 오 (five / oh) alone are words, not numbers
    assert numbers_to_digits("이 사람은 사 학년") == "이 사람은 사 학년"
    assert numbers_to_digits("일") == "일"  # 1 read alone is the word 일 (work, day)
    assert parse_sino_korean("이삼") is None and parse_sino_korean("뉴스") is None


def test_the_numbers_policy_is_applied_to_references_and_hypotheses_alike():
    ref, hyp = "금리를 0.1% 올렸다.", "금리를 영 점 일 프로 올렸다"
    for numbers in ("korean", "digits"):
        rates = error_rates([ref], [hyp], NormalizationPolicy(numbers=numbers))
        assert rates.cer_normalized == 0.0 and rates.wer_normalized == 0.0
    kept = error_rates([ref], [hyp], NormalizationPolicy(numbers="keep"))
    assert kept.cer_normalized > 0.5
    assert error_rates([ref], [hyp]).cer > 0.5  # the raw CER never normalises


def test_punctuation_and_spacing_choices():
    keep_spaces = NormalizationPolicy(spacing="keep")
    assert keep_spaces.characters("오늘, 날씨!") == "오늘 날씨"
    keep_marks = NormalizationPolicy(punctuation="keep")
    assert keep_marks.characters("오늘, 날씨!") == "오늘,날씨!"
    with pytest.raises(ConfigError, match="ASR_NORMALIZE_NUMBERS"):
        NormalizationPolicy(numbers="roman")


def test_bootstrap_interval_brackets_the_corpus_rate_and_is_reproducible():
    refs = ["오늘 날씨가 좋습니다", "서울 지역에 비가 옵니다", "내일은 맑겠습니다", "바람이 강하게 붑니다"] * 10
    hyps = ["오늘 날씨가 좋습니다", "서울 지역에 눈이 옵니다", "내일은 흐리겠습니다", "바람이 붑니다"] * 10
    counts = edit_counts(refs, hyps)
    rate = counts.rate("cer")
    assert rate == pytest.approx(jiwer.cer(refs, hyps))
    lo, hi = bootstrap_ci(counts, "cer", resamples=2000, seed=1)
    assert lo < rate < hi and hi - lo < 0.2
    assert bootstrap_ci(counts, "cer", resamples=2000, seed=1) == [lo, hi]
    # identical pairs: no uncertainty at all
    assert bootstrap_ci(edit_counts(refs, refs), "cer") == [0.0, 0.0]
    assert np.isnan(bootstrap_ci(edit_counts([], []), "cer")[0])
