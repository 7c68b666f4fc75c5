"""Render a letter's (autoescaped) HTML to PDF with fpdf2 and the DejaVu Sans font.

Templates (:mod:`caldicott.letters.render`) produce a small, fixed subset of HTML: ``h1``, ``h2``, ``p``,
``li``, ``b`` and ``br``. Jinja autoescapes every value, so a patient called ``<script>`` arrives here as
``&lt;script&gt;``; the parser below turns the markup into blocks and the character references back into
text, and the PDF shows ``<script>`` literally. A value can never become markup.

DejaVu Sans (shipped with matplotlib) covers the accented names a service meets (``O'Brien-Zoë``,
``Ní Bhriain``). Parsing a 700 kB TrueType file costs about 0.1 s, more than everything else in a letter,
so each face is parsed **once per process**: it is first cut down to the Latin, punctuation and symbol
ranges a letter uses, and each new document gets a light copy of the parsed font whose glyph-usage map
is its own (fpdf2 subsets the embedded font per document at output).
"""

from __future__ import annotations

import copy
import functools
import io
import os
import re
from html.parser import HTMLParser
from pathlib import Path

from fontTools import subset as ftsubset
from fontTools import ttLib
from fpdf import FPDF
from fpdf.fonts import SubsetMap, TTFFont

FAMILY = "dejavu"
#: Letters whose every character is in Windows-1252 (nearly all: English text, Western European names
#: such as O'Brien-Zoë or Ní Bhriain, dashes, bullets) use the PDF core font Helvetica, which needs no
#: embedding and renders ten times faster; any other character switches the whole letter to DejaVu Sans.
CORE = "helvetica"
CORE_ENCODING = "cp1252"
#: The code points kept in the once-per-process font: Latin (with extensions and combining marks),
#: general punctuation, currency and arrows. Anything else prints as the font's "missing" box.
UNICODES = [*range(0x20, 0x7F), *range(0xA0, 0x250), *range(0x300, 0x370), *range(0x2000, 0x2070),
            0x20AC, 0x2122, *range(0x2190, 0x2194), 0x2713, 0x2717]


def font_path(bold: bool = False) -> Path:
    """DejaVu Sans as shipped by matplotlib (mpl-data/fonts/ttf)."""
    import matplotlib

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return Path(os.path.dirname(matplotlib.__file__)) / "mpl-data" / "fonts" / "ttf" / name


@functools.cache
def _font_bytes(bold: bool) -> bytes:
    font = ttLib.TTFont(str(font_path(bold)), recalcTimestamp=False)
    options = ftsubset.Options(notdef_outline=True, recommended_glyphs=True, layout_features=[])
    sub = ftsubset.Subsetter(options)
    sub.populate(unicodes=UNICODES)
    sub.subset(font)
    buf = io.BytesIO()
    font.save(buf)
    return buf.getvalue()


@functools.cache
def _prototype(bold: bool) -> TTFFont:
    """One parsed font per face and process (metrics, cmap, widths), from the cut-down font in memory."""
    holder = FPDF()
    return TTFFont(holder, io.BytesIO(_font_bytes(bold)), FAMILY + ("B" if bold else ""), "B" if bold else "")


def _attach_fonts(pdf: FPDF) -> None:
    """Give ``pdf`` its own light copies of the cached fonts (shared metrics, own glyph subset)."""
    for bold in (False, True):
        proto = _prototype(bold)
        font = copy.copy(proto)
        font.i = len(pdf.fonts) + 1
        font.ttfont = ttLib.TTFont(io.BytesIO(_font_bytes(bold)), recalcTimestamp=False, lazy=True)
        font.subset = SubsetMap(font)
        font.biggest_size_pt = 0
        font.missing_glyphs = []
        pdf.fonts[proto.fontkey] = font


class _Blocks(HTMLParser):
    """Markup → [(tag, [(bold, text), ...])]; character references become plain text."""

    BLOCKS = {"h1", "h2", "p", "li"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[tuple[str, list[tuple[bool, str]]]] = []
        self._tag: str | None = None
        self._runs: list[tuple[bool, str]] = []
        self._bold = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.BLOCKS:
            self._flush()
            self._tag = tag
        elif tag == "b":
            self._bold += 1
        elif tag == "br":
            self._runs.append((bool(self._bold), "\n"))

    def handle_endtag(self, tag):
        if tag in self.BLOCKS:
            self._flush()
        elif tag == "b":
            self._bold = max(0, self._bold - 1)

    def handle_data(self, data):
        if self._tag is None:
            if not data.strip():
                return
            self._tag = "p"
        text = " ".join(data.split()) if "\n" in data else data
        if text:
            self._runs.append((bool(self._bold), text))

    def _flush(self) -> None:
        if self._tag and any(t.strip() for _, t in self._runs):
            self.blocks.append((self._tag, self._runs))
        self._tag, self._runs = None, []

    def close(self):
        super().close()
        self._flush()


def parse_blocks(markup: str) -> list[tuple[str, list[tuple[bool, str]]]]:
    parser = _Blocks()
    parser.feed(markup)
    parser.close()
    return parser.blocks


def html_to_pdf(markup: str, *, title: str = "Letter") -> bytes:
    """A PDF of ``markup`` (the template subset above). Deterministic for the same markup."""
    pdf = FPDF(format="A4")
    pdf.core_fonts_encoding = CORE_ENCODING
    pdf.set_creation_date(_EPOCH)
    pdf.set_title(title)
    pdf.set_creator("Caldicott")
    pdf.set_margins(20, 18, 20)
    pdf.set_auto_page_break(True, margin=18)
    blocks = parse_blocks(markup)
    family = CORE if _fits_core(blocks) else FAMILY
    if family == FAMILY:
        _attach_fonts(pdf)
    pdf.add_page()
    width = pdf.w - pdf.l_margin - pdf.r_margin
    bottom = pdf.h - 18
    y = pdf.t_margin
    font: tuple[str, float] | None = None   # set_font only when it changes (it is not free in fpdf2)
    for tag, runs in blocks:
        size, gap = {"h1": (15, 3), "h2": (12, 2)}.get(tag, (10.5, 2))
        height = size * 0.5
        if tag in ("h1", "h2"):
            y += 1
            runs = [(True, t) for _, t in runs]
        if tag == "li":
            runs = [(False, "•  "), *runs]
        for line in _wrap(runs, size, width, family):
            if y + height > bottom:
                pdf.add_page()
                y = pdf.t_margin
            x = pdf.l_margin
            for bold, text, w in line:
                if font != ("B" if bold else "", size):
                    font = ("B" if bold else "", size)
                    pdf.set_font(family, *font)
                pdf.text(x, y + height * 0.78, text)
                x += w
            y += height
        y += gap
    return bytes(pdf.output())


def _fits_core(blocks) -> bool:
    try:
        for _, runs in blocks:
            for _, text in runs:
                text.encode(CORE_ENCODING)
    except UnicodeEncodeError:
        return False
    return True


@functools.cache
def _width_table(family: str, bold: bool) -> dict[str, float]:
    """Glyph advance per character (font units per 1000 em), for every character the face can print."""
    if family == FAMILY:
        cw = _prototype(bold).cw
        return {chr(c): cw[c] for c in UNICODES}
    from fpdf.fonts import CORE_FONTS_CHARWIDTHS

    cw = CORE_FONTS_CHARWIDTHS[family + ("B" if bold else "")]
    table = {}
    for i in range(256):
        try:
            ch = bytes([i]).decode(CORE_ENCODING)
        except UnicodeDecodeError:
            continue
        table[ch] = cw[chr(i)]
    return table


@functools.lru_cache(maxsize=50_000)
def _word_width(family: str, bold: bool, word: str) -> float:
    """Width of ``word`` at 1 pt, in mm (words repeat across letters: cached)."""
    table = _width_table(family, bold)
    default = table.get("?", 500)
    return sum(table.get(c, default) for c in word) / 1000 * 25.4 / 72


def _wrap(runs: list[tuple[bool, str]], size: float, width: float,
          family: str) -> list[list[tuple[bool, str, float]]]:
    """Greedy word wrap with cached glyph widths (fpdf2's own breaker is quadratic in paragraph length)."""
    lines: list[list[tuple[bool, str, float]]] = []
    line: list[tuple[bool, str, float]] = []
    used = 0.0
    for bold, text in runs:
        if text == "\n":
            lines.append(line)
            line, used = [], 0.0
            continue
        for word in _WORDS.findall(text):
            w = _word_width(family, bold, word) * size
            if line and used + _word_width(family, bold, word.rstrip()) * size > width:
                lines.append(line)
                line, used = [], 0.0
                word = word.lstrip()
                if not word:
                    continue
                w = _word_width(family, bold, word) * size
            if line and line[-1][0] == bold:
                prev = line[-1]
                line[-1] = (bold, prev[1] + word, prev[2] + w)
            else:
                line.append((bold, word, w))
            used += w
    if line:
        lines.append(line)
    return lines


_WORDS = re.compile(r"\S+\s*|\s+")


def pdf_text(data: bytes) -> str:
    """The text of a PDF (tests and the ack responder use it to check what arrived)."""
    from pypdf import PdfReader

    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)


import datetime as _dt  # noqa: E402

_EPOCH = _dt.datetime(2020, 1, 1, tzinfo=_dt.UTC)
