"""Tests of mrfound/data/sequences.py: vocabularies, aliases, protocols."""

import pytest

from mrfound.data.sequences import (
    CLASSES,
    SEQUENCES,
    Vocabulary,
    all_protocols,
    canonical_class,
    canonical_sequence,
    protocol_sequences,
)
from mrfound.errors import ConfigError


@pytest.mark.parametrize(
    "name,expected",
    [("T2WI", "t2"), ("DWI", "dwi"), ("In Phase", "t1_in"), ("Out Phase", "t1_opp"), ("C-pre", "t1_pre"),
     ("C+A", "t1_art"), ("C+V", "t1_pv"), ("C+Delay", "t1_del"), ("t2_haste", "t2"), ("art", "t1_art"),
     ("pv", "t1_pv"), ("delayed", "t1_del"), ("t1_opp", "t1_opp"), ("flair", None)],
)
def test_sequence_aliases(name, expected):
    assert canonical_sequence(name) == expected


def test_class_aliases_and_malignancy():
    assert canonical_class("Hepatocellular carcinoma") == "hcc"
    assert canonical_class("FNH") == "fnh"
    assert canonical_class("lymphoma") is None
    v = Vocabulary()
    assert v.is_malignant("HCC") and not v.is_malignant("cyst")
    assert v.class_index("cyst") == CLASSES.index("cyst")
    with pytest.raises(ConfigError, match="unknown class"):
        v.class_index("lymphoma")


def test_custom_vocabulary_roundtrip_and_aliases():
    v = Vocabulary(sequences=("t2", "adc", "t1_hbp"), classes=("hcc", "other"),
                   sequence_aliases={"HBP": "t1_hbp"})
    assert v.canonical_sequence("hbp") == "t1_hbp"
    assert v.canonical_sequence("ADC") == "adc"
    assert v.canonical_sequence("C+A") is None  # t1_art is not in this vocabulary
    assert Vocabulary.from_dict(v.to_dict()) == v
    with pytest.raises(ConfigError, match="duplicate"):
        Vocabulary(sequences=("t2", "t2"))


def test_protocols():
    assert protocol_sequences("all") == SEQUENCES
    assert protocol_sequences("no_contrast") == ("t2", "dwi", "t1_in", "t1_opp")
    assert protocol_sequences("t2_only") == ("t2",)
    assert protocol_sequences("only_dwi") == ("dwi",)
    assert "t1_art" not in protocol_sequences("without_t1_art")
    assert len(protocol_sequences("without_t1_art")) == len(SEQUENCES) - 1
    assert len(all_protocols()) == 4 + 2 * len(SEQUENCES)
    with pytest.raises(ConfigError, match="unknown protocol"):
        protocol_sequences("only_flair")
