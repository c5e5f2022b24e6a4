"""Build ``giabench/corpora/austen.tsv.gz``, the English sentences the ``austen`` text dataset reads, from Debian's
``r-cran-janeaustenr`` package (version 1.0.0-1; Julia Silge's janeaustenr, MIT licence; the six novels' text from
Project Gutenberg, in the public domain).

    apt-get download r-cran-janeaustenr=1.0.0-1 && dpkg -x r-cran-janeaustenr_1.0.0-1_all.deb pkg
    python tools/build_austen_corpus.py pkg/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb

The package keeps each novel as an R character vector of text lines in an R lazy-load database (``Rdata.rdb``: a
sequence of zlib-compressed, XDR-serialized R objects, each behind a 4-byte length). This reads those vectors with the
standard library, joins lines into paragraphs (blank-line separated), drops headings, splits paragraphs into sentences
and writes ``novel<TAB>sentence`` lines: the first ``PER_NOVEL`` sentences of at least ``MIN_WORDS`` words of each
novel, in the novels' order. The output is deterministic; ``tests/test_text_data.py`` checks its digest.
"""

from __future__ import annotations

import argparse
import gzip
import re
import struct
import zlib
from pathlib import Path

NOVELS = {"EMMA": "emma", "MANSFIELD PARK": "mansfield-park", "NORTHANGER ABBEY": "northanger-abbey",
          "PERSUASION": "persuasion", "PRIDE AND PREJUDICE": "pride-and-prejudice",
          "SENSE AND SENSIBILITY": "sense-and-sensibility"}
PER_NOVEL = 2000
MIN_WORDS = 4
STRSXP = 16  # R's type code of a character vector
ABBREVIATIONS = ("Mr", "Mrs", "Dr", "St", "Col", "Capt", "Esq", "Messrs", "Sept")
HEADING = re.compile(r"^(chapter|volume|vol\.|the end|finis)\b", re.IGNORECASE)
SENTENCE_END = re.compile(r"(?<=[.!?])[\"')]*\s+(?=[\"'(]*[A-Z])")


def r_objects(path: Path):
    """The decompressed serialized objects of an R lazy-load database, in file order."""
    data, offset = path.read_bytes(), 0
    while offset < len(data):
        inflater = zlib.decompressobj()
        yield inflater.decompress(data[offset + 4:])
        offset = len(data) - len(inflater.unused_data)


def character_vector(blob: bytes) -> list[str] | None:
    """The strings of a serialized R character vector (XDR format 2 or 3); None for any other object."""
    if blob[:2] != b"X\n":
        return None
    version, at = struct.unpack(">i", blob[2:6])[0], 14
    if version == 3:  # format 3 adds the native encoding's name
        at += 4 + struct.unpack(">i", blob[at:at + 4])[0]
    if struct.unpack(">I", blob[at:at + 4])[0] & 0xFF != STRSXP:
        return None
    count, at = struct.unpack(">i", blob[at + 4:at + 8])[0], at + 8
    strings = []
    for _ in range(count):
        flags, length = struct.unpack(">Ii", blob[at:at + 8])
        at += 8
        if length < 0:  # NA_character_
            strings.append("")
            continue
        strings.append(blob[at:at + length].decode("latin-1" if flags & (1 << 14) else "utf-8"))
        at += length
    return strings


def sentences(lines: list[str]) -> list[str]:
    """The novel's sentences: paragraphs joined from lines, headings dropped, italics marks removed, split after
    ., ! or ? before a capital (not after Mr., Mrs. ...)."""
    paragraphs, current = [], []
    for line in [*lines, ""]:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    found = []
    for paragraph in paragraphs:
        if HEADING.match(paragraph) or not re.search("[a-z]", paragraph):  # a heading, or a title in capitals
            continue
        text = re.sub(r"\s+", " ", paragraph.replace("_", ""))
        pieces = SENTENCE_END.split(text)
        merged: list[str] = []
        for piece in pieces:
            if merged and merged[-1].rstrip("\"')").endswith(tuple(f"{a}." for a in ABBREVIATIONS)):
                merged[-1] = f"{merged[-1]} {piece}"
            else:
                merged.append(piece)
        found += [s.strip() for s in merged if len(s.split()) >= MIN_WORDS]
    return found


def build(rdb: Path, out: Path) -> None:
    rows = []
    for blob in r_objects(rdb):
        lines = character_vector(blob)
        if not lines:
            continue
        title = next(line.strip().upper() for line in lines if line.strip())
        if title not in NOVELS:
            raise SystemExit(f"{rdb}: unexpected vector starting {title!r}")
        rows += [f"{NOVELS[title]}\t{s}" for s in sentences(lines)[:PER_NOVEL]]
    if len(rows) != PER_NOVEL * len(NOVELS):
        raise SystemExit(f"{rdb}: found {len(rows)} sentences, expected {PER_NOVEL * len(NOVELS)}")
    with gzip.GzipFile(out, "wb", mtime=0) as handle:
        handle.write(("\n".join(rows) + "\n").encode("utf-8"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rdb", type=Path, help="janeaustenr's data/Rdata.rdb")
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "giabench/corpora/austen.tsv.gz")
    args = parser.parse_args()
    build(args.rdb, args.out)
