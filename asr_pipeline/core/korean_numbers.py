"""Numbers in Korean text, both ways: digits to their readings ("0.1%" -> "영 점 일 프로", "3시" -> "세 시") and
readings back to digits, for the normalisation policy's numbers setting (asr_pipeline.core.text, docs/NORMALISATION.md).
Captions write digits where a speaker says the reading, and Whisper may write either."""

from __future__ import annotations

import re

# ---------------------------------------------------------------- numbers: digits -> Korean readings

SINO_DIGITS = "영일이삼사오육칠팔구"
SMALL_UNITS = ((1000, "천"), (100, "백"), (10, "십"))
LARGE_UNITS = ((10**16, "경"), (10**12, "조"), (10**8, "억"), (10**4, "만"))
# Counters read with native Korean numbers ("3시" is "세 시", "2명" is "두 명"); other counters read Sino-Korean.
NATIVE_COUNTERS = ("시간", "시", "개", "명", "살", "마리", "잔", "권", "척", "대")
NATIVE_ONES = ["", "한", "두", "세", "네", "다섯", "여섯", "일곱", "여덟", "아홉"]
NATIVE_TENS = ["", "열", "스물", "서른", "마흔", "쉰", "예순", "일흔", "여든", "아흔"]
PERCENT_WORDS = ("퍼센트", "프로")  # both are said on air; the policy writes 프로

# A date written with dots: a year of 4 digits, a month and a day, a space allowed after each dot (2026.01.05,
# 2026. 1. 5.), or a year of 2 digits with a padded month and day, no spaces (26.01.05; 17.1.2 is a version); not
# followed by another dotted group.
_MONTH, _DAY = r"(?:0?[1-9]|1[0-2])", r"(?:0?[1-9]|[12]\d|3[01])"
_DOTTED_DATE = (rf"(?:\d{{4}}\. ?{_MONTH}\. ?{_DAY}|\d{{2}}\.(?:0[1-9]|1[0-2])\.(?:0[1-9]|[12]\d|3[01]))"
                r"(?!\d)(?!\.\d)")
_DOTTED_CHAIN = r"\d+(?:\.\d+){2,}(?!\d)"
# Three or more digit groups joined by dots are a date, a version or an address, never a decimal. In one pattern
# with the numbers (their groups numbered 1 to 4), so that what comes after a date still sees the date's digits
# before it ("2026.1.5-7": a range, not minus seven). A hyphen is a minus sign at the start, after a space, after
# one of ( [ { ~ : = , / " ' or an opening bracket or quote, and never before a dotted chain (-2026.1.5 is a range's
# end): "-3.5도", "기온 -5도", "(-3)", "“-5도”", "-5/-10" are 마이너스; "A-01", "KTX-1", "3%-5%", "30㎜-80㎜",
# "《뉴스》-2부" and "영하-5도" are not.
_MINUS = (r"(?<![^\s(\[{~:=,/\"'“‘「『《〈【〔（［｛‹«])-(?!" + _DOTTED_DATE + "|" + _DOTTED_CHAIN + ")")
_NUMBER = re.compile(r"(?<![\d.])(?:" + _DOTTED_DATE + "|" + _DOTTED_CHAIN +
                     r"|(" + _MINUS + r")?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(\s*%)?)")
_DATE = re.compile(_DOTTED_DATE)
_NATIVE = re.compile(r"(?<![\d.,])(\d{1,2})(\s*)(" + "|".join(NATIVE_COUNTERS) + r")(?![\d])")


def _sino_below_10000(n: int) -> str:
    out = []
    for value, unit in SMALL_UNITS:
        digit, n = divmod(n, value)
        if digit:
            out.append(("" if digit == 1 else SINO_DIGITS[digit]) + unit)
    if n:
        out.append(SINO_DIGITS[n])
    return "".join(out)


def digit_by_digit(digits: str) -> list[str]:
    """"305" -> [삼, 영, 오]: how decimals and long serial numbers are read."""
    return [SINO_DIGITS[int(d)] for d in digits]


def sino_korean(n: int) -> str:
    """12345 -> 만이천삼백사십오 (Sino-Korean reading, grouped by 10^4 as Korean is). From 10^20 on (past 경's
    groups: 해 and above are not said on air) digit by digit, as a long account or serial number is read; a
    decoder looping on digits writes such runs."""
    if n == 0:
        return "영"
    if n >= LARGE_UNITS[0][0] * 10_000:
        return " ".join(digit_by_digit(str(n)))
    out = []
    for value, unit in LARGE_UNITS:
        group, n = divmod(n, value)
        if group:
            out.append(("" if group == 1 and unit == "만" else _sino_below_10000(group)) + unit)
    if n:
        out.append(_sino_below_10000(n))
    return " ".join(out)


def native_korean(n: int) -> str:
    """1..99 -> attributive native reading (한, 두, 스무, 서른두...)."""
    tens, ones = divmod(n, 10)
    if tens == 2 and ones == 0:
        return "스무"
    return NATIVE_TENS[tens] + NATIVE_ONES[ones]


def _read_number(match: re.Match) -> str:
    sign, integer, fraction, percent = match.groups()
    if integer is None:
        return _read_dotted(match.group(0))
    # "영하 -5도" says 영하 오 도: the sign repeats what 영하 (below zero) says
    words = ["마이너스"] if sign and not match.string[max(0, match.start() - 4):match.start()].rstrip().endswith(
        "영하") else []
    digits = integer.replace(",", "")
    # digit by digit from the text: past 경's groups (no int() of thousands of digits), and a number written with
    # leading zeros ("007", "02-123", "B01"), a code read digit by digit, not a quantity ("007" is not 칠), except
    # two padded digits of a date or a time ("01월 05일", "09:05"), read as their value
    serial = len(digits) > 20 or (len(digits) > 1 and digits.startswith("0") and not _padded_date_or_time(match))
    words.append(" ".join(digit_by_digit(digits)) if serial else sino_korean(int(digits)))
    if fraction:
        words += ["점", *digit_by_digit(fraction)]
    if percent:
        words.append("프로")
    return " " + " ".join(words) + " "


DATE_TIME_UNITS = "월일시분초"  # after two padded digits: a date or a time


def _padded_date_or_time(match: re.Match) -> bool:
    """Two digits, one a leading zero, of a date or a time: before a unit (01월, 05분), beside a colon (09:05), or a
    part of a date written with - or / (2026-01-05, 04-28, 01/05, 01-05-2026): the groups beside it of 1, 2 or 4
    digits (02-123 is a phone number, 3333-01-1234567 an account). Looks only at the characters next to
    the match, so a long transcript costs time in proportion to its length."""
    if len(match.group(2)) != 2 or match.group(3) or match.group(4):
        return False
    text, start, end = match.string, match.start(2), match.end(2)
    after = end
    while after < len(text) and text[after] == " ":
        after += 1
    before = start - 1
    while before >= 0 and text[before] == " ":
        before -= 1
    if (after < len(text) and text[after] in DATE_TIME_UNITS + ":") or (before >= 0 and text[before] == ":"):
        return True
    previous, following = _joined_group(text, start - 1, -1), _joined_group(text, end, 1)
    if previous is None and following is None:
        return False
    # a year of 4 digits on one side (2026-01-05, 01-05-2026), never on both; a longer group is a code
    return previous in (None, 1, 2, 4) and following in (None, 1, 2, 4) and not (previous == following == 4)


def _joined_group(text: str, at: int, step: int) -> int | None:
    """The length (5 meaning 5 or more) of the digit group joined by the -, / or ~ at `at`, going `step`; None if
    there is none."""
    if not (0 <= at < len(text)) or text[at] not in "-/~":
        return None
    length, i = 0, at + step
    while 0 <= i < len(text) and text[i].isdigit() and length < 5:
        length, i = length + 1, i + step
    return length or None


def _read_dotted(written: str) -> str:
    """A date with dots reads as 2026-01-05 does, each group its value and the dots kept (punctuation goes later):
    2026.01.05 and 2026. 1. 5 -> 이천이십육 . 일 . 오. Other dotted groups are a version or an address, read with
    점 as said on air: 192.168.0.1 -> 백구십이 점 백육십팔 점 영 점 일; there a group with a leading zero is a code,
    read digit by digit (10.01.001 -> 십 점 영 일 점 영 영 일)."""
    groups = [group.strip() for group in written.split(".")]
    if _DATE.fullmatch(written):
        return " " + " . ".join(sino_korean(int(group)) for group in groups) + " "

    def read(group: str) -> str:
        code = len(group) > 20 or (len(group) > 1 and group.startswith("0"))
        return " ".join(digit_by_digit(group)) if code else sino_korean(int(group))

    return " " + " 점 ".join(read(group) for group in groups) + " "


def numbers_to_korean(text: str) -> str:
    """Write every number as it is read: native before counters (3시 -> 세 시), Sino-Korean otherwise
    (0.1% -> 영 점 일 프로, 1,500 -> 천오백); 퍼센트 becomes 프로."""
    text = _NATIVE.sub(lambda m: f" {native_korean(int(m.group(1)))} {m.group(3)}" if int(m.group(1)) else m.group(0),
                       text)
    text = _NUMBER.sub(_read_number, text)
    return re.sub(r"퍼센트", "프로", text)


# ---------------------------------------------------------------- numbers: Korean readings -> digits

_SINO_VALUE = {ch: i for i, ch in enumerate(SINO_DIGITS)} | {"공": 0}
_SMALL_VALUE = {unit: value for value, unit in SMALL_UNITS}
_LARGE_VALUE = {unit: value for value, unit in LARGE_UNITS}
_NUMBER_WORD = re.compile(r"^[영공일이삼사오육칠팔구십백천만억조경]+$")


def parse_sino_korean(word: str) -> int | None:
    """만이천삼백사십오 -> 12345; None when the word is not a well-formed Sino-Korean number."""
    if not _NUMBER_WORD.match(word):
        return None
    total, group, digit = 0, 0, None
    for ch in word:
        if ch in _SINO_VALUE:
            if digit is not None:
                return None  # two digits in a row ("이삼") is a digit string, not a number reading
            digit = _SINO_VALUE[ch]
        elif ch in _SMALL_VALUE:
            group += (1 if digit is None else digit) * _SMALL_VALUE[ch]
            digit = None
        else:
            total += max(group + (digit or 0), 1) * _LARGE_VALUE[ch]
            group, digit = 0, None
    return total + group + (digit or 0)


def _is_number_word(token: str) -> bool:
    # One syllable alone ("이", "사", "오") is far more often a word than a number: only longer readings, or a
    # reading that names a unit (십, 백, ...), count on their own; single digits count next to 점 or 프로.
    return parse_sino_korean(token) is not None and (len(token) > 1 or token in _SMALL_VALUE or token in _LARGE_VALUE)


def numbers_to_digits(text: str) -> str:
    """The reverse policy: 영 점 일 프로 -> 0.1%, 삼백 -> 300, 퍼센트/프로 after a number -> %. Conservative:
    ambiguous single syllables stay words unless 점 or a percent word makes them numeric."""
    tokens = text.split()
    out: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        value = parse_sino_korean(token)
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        numeric = value is not None and (_is_number_word(token) or nxt == "점" or nxt in PERCENT_WORDS)
        if not numeric:
            out.append(token)
            i += 1
            continue
        i += 1
        # "만 이천삼백" is one number written in two words (Korean spaces after 만, 억, 조)
        while token[-1] in _LARGE_VALUE and i < len(tokens) and parse_sino_korean(tokens[i]) is not None \
                and parse_sino_korean(tokens[i]) < _LARGE_VALUE[token[-1]]:
            token = tokens[i]
            value += parse_sino_korean(token)
            i += 1
        written = str(value)
        if i < len(tokens) and tokens[i] == "점":
            digits = []
            j = i + 1
            while j < len(tokens) and len(tokens[j]) == 1 and tokens[j] in _SINO_VALUE:
                digits.append(str(_SINO_VALUE[tokens[j]]))
                j += 1
            if digits:
                written += "." + "".join(digits)
                i = j
        if i < len(tokens) and tokens[i] in PERCENT_WORDS:
            written += "%"
            i += 1
        out.append(written)
    return " ".join(out)
