"""Sequence and class vocabularies (DESIGN §3) and the alias table for real-world names.

The canonical sequence names follow LLD-MMRI's eight phases. Real cohorts name them in many ways
("T2WI", "In Phase", "C+A", "t2_haste", "pv"...); :func:`canonical_sequence` maps such names to the
canonical ones. A project may define its own :class:`Vocabulary` (e.g. with ``adc`` or ``t1_hbp``);
a model stores the vocabulary it was trained with in its checkpoint config.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from mrfound.errors import ConfigError

SEQUENCES: tuple[str, ...] = ("t2", "dwi", "t1_in", "t1_opp", "t1_pre", "t1_art", "t1_pv", "t1_del")
"""Canonical sequence names, in the order used for the image channel axis."""

CLASSES: tuple[str, ...] = ("hcc", "icca", "metastasis", "hemangioma", "fnh", "adenoma", "cyst", "abscess")
"""Default lesion class vocabulary."""

MALIGNANT: frozenset[str] = frozenset({"hcc", "icca", "metastasis"})
"""Classes counted as malignant for the benign-vs-malignant metric (Starmans et al.)."""

CONTRAST_SEQUENCES: tuple[str, ...] = ("t1_pre", "t1_art", "t1_pv", "t1_del")
"""Dynamic contrast phases (the ``contrast_only`` protocol keeps these)."""

NON_CONTRAST_SEQUENCES: tuple[str, ...] = ("t2", "dwi", "t1_in", "t1_opp")
"""Sequences acquired without a contrast agent (the ``no_contrast`` protocol keeps these)."""

# Keys are normalised (lower case, alphanumerics only). LLD-MMRI names first, then common scanner and
# paper spellings.
SEQUENCE_ALIASES: dict[str, str] = {
    # T2
    "t2": "t2", "t2wi": "t2", "t2w": "t2", "t2haste": "t2", "haste": "t2", "t2fs": "t2", "t2spir": "t2",
    "t2tse": "t2", "t2fse": "t2", "ssfse": "t2",
    # diffusion
    "dwi": "dwi", "dw": "dwi", "diffusion": "dwi", "dwib800": "dwi", "b800": "dwi", "dwib500": "dwi",
    # T1 dual echo
    "inphase": "t1_in", "t1in": "t1_in", "t1inphase": "t1_in", "ip": "t1_in", "in": "t1_in",
    "outphase": "t1_opp", "opposedphase": "t1_opp", "oppphase": "t1_opp", "t1opp": "t1_opp",
    "t1out": "t1_opp", "t1outphase": "t1_opp", "t1opposed": "t1_opp", "op": "t1_opp", "opp": "t1_opp",
    "oop": "t1_opp", "out": "t1_opp",
    # dynamic contrast phases
    "cpre": "t1_pre", "pre": "t1_pre", "t1pre": "t1_pre", "precontrast": "t1_pre", "t1precontrast": "t1_pre",
    "native": "t1_pre", "t1": "t1_pre",
    "ca": "t1_art", "art": "t1_art", "arterial": "t1_art", "t1art": "t1_art", "t1arterial": "t1_art",
    "hap": "t1_art", "lap": "t1_art", "ap": "t1_art",
    "cv": "t1_pv", "pv": "t1_pv", "pvp": "t1_pv", "portal": "t1_pv", "portalvenous": "t1_pv",
    "venous": "t1_pv", "t1pv": "t1_pv", "t1portal": "t1_pv", "t1venous": "t1_pv",
    "cdelay": "t1_del", "delay": "t1_del", "delayed": "t1_del", "del": "t1_del", "t1del": "t1_del",
    "t1delayed": "t1_del", "equilibrium": "t1_del", "transitional": "t1_del", "tp": "t1_del",
}

CLASS_ALIASES: dict[str, str] = {
    "hcc": "hcc", "hepatocellularcarcinoma": "hcc",
    "icca": "icca", "icc": "icca", "cholangiocarcinoma": "icca", "intrahepaticcholangiocarcinoma": "icca",
    "metastasis": "metastasis", "metastases": "metastasis", "met": "metastasis", "mets": "metastasis",
    "hm": "metastasis", "hepaticmetastasis": "metastasis",
    "hemangioma": "hemangioma", "haemangioma": "hemangioma", "hh": "hemangioma",
    "hepatichemangioma": "hemangioma",
    "fnh": "fnh", "focalnodularhyperplasia": "fnh",
    "adenoma": "adenoma", "hca": "adenoma", "hepatocellularadenoma": "adenoma",
    "cyst": "cyst", "hepaticcyst": "cyst", "simplecyst": "cyst",
    "abscess": "abscess", "liverabscess": "abscess", "hepaticabscess": "abscess",
}


def normalise_name(name: str) -> str:
    """Lower-case ``name`` and drop everything but letters and digits ("C+A" -> "ca")."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


@dataclass(frozen=True)
class Vocabulary:
    """The sequences and classes a cohort or model uses.

    Args:
        sequences: Sequence names, in channel order.
        classes: Class names, in label-index order.
        malignant: Subset of ``classes`` counted as malignant.
        sequence_aliases: Extra alias -> sequence mappings (keys are normalised on use).
        class_aliases: Extra alias -> class mappings.
    """

    sequences: tuple[str, ...] = SEQUENCES
    classes: tuple[str, ...] = CLASSES
    malignant: frozenset[str] = MALIGNANT
    sequence_aliases: Mapping[str, str] = field(default_factory=dict)
    class_aliases: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind, names in (("sequence", self.sequences), ("class", self.classes)):
            if len(names) == 0:
                raise ConfigError(f"the {kind} vocabulary is empty")
            if len(set(names)) != len(names):
                raise ConfigError(f"the {kind} vocabulary has duplicate names: {list(names)}")
        object.__setattr__(self, "sequences", tuple(self.sequences))
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "malignant", frozenset(m for m in self.malignant if m in self.classes))

    def canonical_sequence(self, name: str) -> str | None:
        """Map a sequence name or alias to this vocabulary's name; ``None`` if unknown."""
        return _lookup(name, self.sequences, SEQUENCE_ALIASES, self.sequence_aliases)

    def canonical_class(self, name: str) -> str | None:
        """Map a class name or alias to this vocabulary's name; ``None`` if unknown."""
        return _lookup(name, self.classes, CLASS_ALIASES, self.class_aliases)

    def class_index(self, name: str) -> int:
        """Label index of ``name`` (an alias is accepted). Raises ``ConfigError`` if unknown."""
        c = self.canonical_class(name)
        if c is None:
            raise ConfigError(f"unknown class {name!r}; known: {', '.join(self.classes)}")
        return self.classes.index(c)

    def is_malignant(self, name: str) -> bool:
        """Whether class ``name`` counts as malignant."""
        return self.canonical_class(name) in self.malignant

    def to_dict(self) -> dict:
        """JSON-ready form, stored in checkpoint configs."""
        return {
            "sequences": list(self.sequences),
            "classes": list(self.classes),
            "malignant": sorted(self.malignant),
            "sequence_aliases": dict(self.sequence_aliases),
            "class_aliases": dict(self.class_aliases),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> Vocabulary:
        """Inverse of :meth:`to_dict`; missing keys take the defaults."""
        return cls(
            sequences=tuple(d.get("sequences", SEQUENCES)),
            classes=tuple(d.get("classes", CLASSES)),
            malignant=frozenset(d.get("malignant", MALIGNANT)),
            sequence_aliases=dict(d.get("sequence_aliases", {})),
            class_aliases=dict(d.get("class_aliases", {})),
        )


def _lookup(
    name: str, names: Sequence[str], builtin: Mapping[str, str], extra: Mapping[str, str]
) -> str | None:
    if name in names:
        return name
    key = normalise_name(name)
    by_norm = {normalise_name(n): n for n in names}
    if key in by_norm:
        return by_norm[key]
    for table in (extra, builtin):
        norm_table = {normalise_name(k): v for k, v in table.items()}
        if key in norm_table and norm_table[key] in names:
            return norm_table[key]
    return None


DEFAULT_VOCABULARY = Vocabulary()


def canonical_sequence(name: str, vocabulary: Vocabulary = DEFAULT_VOCABULARY) -> str | None:
    """Map a real-world sequence name ("T2WI", "C+V", "t2_haste") to the canonical one, or ``None``."""
    return vocabulary.canonical_sequence(name)


def canonical_class(name: str, vocabulary: Vocabulary = DEFAULT_VOCABULARY) -> str | None:
    """Map a real-world class name ("Hepatocellular carcinoma", "HH") to the canonical one, or ``None``."""
    return vocabulary.canonical_class(name)


PROTOCOLS: dict[str, tuple[str, ...]] = {
    "all": SEQUENCES,
    "no_contrast": NON_CONTRAST_SEQUENCES,
    "t2_only": ("t2",),
    "contrast_only": CONTRAST_SEQUENCES,
}
NAMED_PROTOCOLS: tuple[str, ...] = tuple(PROTOCOLS)
"""The four named missing-sequence protocols of DESIGN §7, in the order tables show them."""


def protocol_sequences(protocol: str, sequences: Iterable[str] = SEQUENCES) -> tuple[str, ...]:
    """Sequences kept by a missing-sequence protocol of DESIGN §7.

    Named protocols: ``all``, ``no_contrast``, ``t2_only``, ``contrast_only``, ``only_<seq>`` (a single
    sequence) and ``without_<seq>`` (leave one out).

    Args:
        protocol: Protocol name.
        sequences: The vocabulary's sequences.

    Returns:
        The kept sequences, in vocabulary order.
    """
    seqs = tuple(sequences)
    if protocol == "all":
        return seqs
    if protocol in PROTOCOLS:
        keep = PROTOCOLS[protocol]
    elif protocol.startswith("only_") and protocol[5:] in seqs:
        keep = (protocol[5:],)
    elif protocol.startswith("without_") and protocol[8:] in seqs:
        keep = tuple(s for s in seqs if s != protocol[8:])
    else:
        raise ConfigError(
            f"unknown protocol {protocol!r}; use all, no_contrast, t2_only, contrast_only, only_<seq> or "
            f"without_<seq> with <seq> in {', '.join(seqs)}"
        )
    return tuple(s for s in seqs if s in keep)


def all_protocols(sequences: Iterable[str] = SEQUENCES) -> list[str]:
    """Every protocol of DESIGN §7 for a vocabulary: the four named ones, each single, each leave-one-out."""
    seqs = tuple(sequences)
    return [*NAMED_PROTOCOLS] + [f"only_{s}" for s in seqs] + [
        f"without_{s}" for s in seqs
    ]
