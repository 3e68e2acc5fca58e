import pytest

from asr_pipeline.core import settings
from asr_pipeline.core.errors import ConfigError
from asr_pipeline.core.settings import PathMap, SplitRatios, validate_identifier


def test_path_map_rewrites_the_notebook_nas_prefix():
    path_map = PathMap.parse("/cul_m01/=/mnt/nas/cul_m01/")
    assert path_map.rewrite("/cul_m01/2021/PRGTM_202106270005_00001.wav") == \
        "/mnt/nas/cul_m01/2021/PRGTM_202106270005_00001.wav"
    assert path_map.rewrite("/elsewhere/a.wav") == "/elsewhere/a.wav"


def test_path_map_longest_prefix_wins_and_windows_paths_are_handled():
    path_map = PathMap.parse("/cul_m01/=/mnt/a/; /cul_m01/special/=/mnt/b/;//nas/share/=/mnt/unc/")
    assert path_map.rewrite("/cul_m01/special/x.wav") == "/mnt/b/x.wav"
    assert path_map.rewrite("/cul_m01/other/x.wav") == "/mnt/a/other/x.wav"
    assert path_map.rewrite(r"\\nas\share\2021\x.wav") == "/mnt/unc/2021/x.wav"


@pytest.mark.parametrize("bad", ["no-equals-sign", "=/target", "/source="])
def test_path_map_rejects_malformed_entries(bad):
    with pytest.raises(ConfigError, match="ASR_PATH_MAP"):
        PathMap.parse(bad)


def test_split_ratios_parse_and_normalise():
    ratios = SplitRatios.parse("8/1/1")
    assert (ratios.train, ratios.valid, ratios.test) == pytest.approx((0.8, 0.1, 0.1))
    for bad in ["80/20", "a/b/c", "-1/1/1", "0/0/0"]:
        with pytest.raises(ConfigError, match="ASR_SPLIT_RATIOS"):
            SplitRatios.parse(bad)


@pytest.mark.parametrize("name", ["training_datas; DROP TABLE x", "a b", "1abc", "x`y", "", "名前", "a" * 65])
def test_identifiers_reject_anything_but_plain_names(name):
    with pytest.raises(ConfigError):
        validate_identifier(name, "table")


def test_group_pattern_needs_a_named_group(monkeypatch):
    monkeypatch.setenv("ASR_GROUP_PATTERN", r"^(\w+)_\d+$")
    with pytest.raises(ConfigError, match="named group"):
        settings.group_pattern()
    monkeypatch.setenv("ASR_GROUP_PATTERN", "([")
    with pytest.raises(ConfigError, match="regular expression"):
        settings.group_pattern()
