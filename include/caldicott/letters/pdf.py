"""Render a letter's (autoescaped) HTML to PDF with fpdf2, in any script a patient's name may be written in.

Templates (:mod:`caldicott.letters.render`) produce a small, fixed subset of HTML: ``h1``, ``h2``, ``p``,
``li``, ``b`` and ``br``. Jinja autoescapes every value, so a patient called ``<script>`` arrives here as
``&lt;script&gt;``; the parser below turns the markup into blocks and the character references back into
text, and the PDF shows ``<script>`` literally. A value can never become markup.

Fonts. A letter whose every character is in Windows-1252 (nearly all) is set in the PDF core font Helvetica:
nothing to embed, ten times faster. Any other letter is set in Unicode fonts, embedded and subset per letter
(fpdf2 keeps only the glyphs the letter uses), each character in the first face that has it:

1. DejaVu Sans (shipped by matplotlib, already a dependency): Latin, Greek, Cyrillic, Hebrew, Arabic, symbols;
2. Noto Sans Devanagari (PyPI ``fontpkg-noto-sans-devanagari``, SIL OFL): Devanagari;
3. Noto Sans CJK (PyPI ``cvttf-notosanscjk-regular``, the SIL OFL Noto Sans CJK TC): Chinese, Japanese, Korean.

That is fpdf2's "fallback fonts" (``FPDF.set_fallback_fonts``) done in this module's own line layout, which
places text with the fast ``FPDF.text`` (fpdf2 applies fallbacks only in ``cell``/``write``). A face whose
package is missing is skipped: its characters then print as the first face's "missing" box. Right-to-left runs
(Hebrew, Arabic) are placed in visual order (the Unicode bidirectional algorithm, ``fpdf.bidi``); letters are not
shaped (Arabic joining, Devanagari conjuncts need HarfBuzz), so those scripts print legibly but unjoined.

Parsing a font costs more than everything else in a letter (0.1 s for DejaVu, 0.7 s for the 16 MB CJK face), so
each face is parsed **once per process**, when a letter first needs it, and each new document gets a light copy
of the parsed font whose glyph-usage map is its own.
"""

from __future__ import annotations

import copy
import datetime as _dt
import functools
import io
import os
import re
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

from fontTools import ttLib
from fpdf import FPDF
from fpdf.enums import TextMode
from fpdf.fonts import SubsetMap, TTFFont

FAMILY = "dejavu"
_FILL = TextMode.FILL
CORE = "helvetica"
CORE_ENCODING = "cp1252"


def font_path(bold: bool = False) -> Path:
    """DejaVu Sans as shipped by matplotlib (mpl-data/fonts/ttf)."""
    import matplotlib

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return Path(os.path.dirname(matplotlib.__file__)) / "mpl-data" / "fonts" / "ttf" / name


def _devanagari_path(bold: bool) -> Path | None:
    try:
        import fontpkg_noto_sans_devanagari as pkg
    except ImportError:
        return None
    return next(iter(sorted((Path(pkg.__file__).parent / "files").glob("*.ttf"))), None)


def _cjk_path(bold: bool) -> Path | None:
    try:
        import cvttf_NotoSansCJK_Regular as pkg
    except ImportError:
        return None
    return next(iter(sorted(Path(pkg.__file__).parent.glob("*.otf"))), None)


#: Unicode faces in the order a character is looked up: (fpdf2 family name, path of the regular / bold file).
#: Faces without a bold file use the regular one for bold too.
FACES: tuple[tuple[str, Callable[[bool], Path | None]], ...] = (
    (FAMILY, font_path),
    ("notodeva", _devanagari_path),
    ("notocjk", _cjk_path),
)


@functools.cache
def _face_file(family: str, bold: bool) -> Path | None:
    path = dict(FACES)[family](bold)
    return Path(path) if path is not None and Path(path).exists() else None


@functools.cache
def _font_bytes(family: str, bold: bool) -> bytes:
    path = _face_file(family, bold)
    assert path is not None
    return path.read_bytes()


@functools.cache
def _prototype(family: str, bold: bool) -> TTFFont:
    """One parsed font per face, weight and process (metrics, cmap, widths)."""
    holder = FPDF()
    style = "B" if bold else ""
    # fpdf2 annotates the font file as a Path, but hands it straight to fontTools' TTFont, which reads a file object
    # as well: parsed from the bytes read once per process (_font_bytes), not from the disk again
    return TTFFont(holder, io.BytesIO(_font_bytes(family, bold)), family + style, style)  # type: ignore[arg-type]


@functools.cache
def _available() -> tuple[str, ...]:
    return tuple(f for f, _ in FACES if _face_file(f, False) is not None and _face_file(f, True) is not None)


@functools.lru_cache(maxsize=100_000)
def face_for(char: str) -> str:
    """The first Unicode face that has a glyph for ``char`` (the first face if none has)."""
    code = ord(char)
    for family in _available():
        # the fallbacks only ever serve what DejaVu lacks (Devanagari and beyond)
        if (family == FAMILY or code >= 0x0900) and code in _prototype(family, False).cmap:
            return family
    return FAMILY


def _attach_fonts(pdf: FPDF, families: set[str]) -> None:
    """Give ``pdf`` its own light copies of the cached faces it needs (shared metrics, own glyph subset)."""
    for family in (f for f in _available() if f in families):
        for bold in (False, True):
            proto = _prototype(family, bold)
            font = copy.copy(proto)
            font.i = len(pdf.fonts) + 1
            font.ttfont = ttLib.TTFont(io.BytesIO(_font_bytes(family, bold)), recalcTimestamp=False, lazy=True)
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

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.BLOCKS:
            self._flush()
            self._tag = tag
        elif tag == "b":
            self._bold += 1
        elif tag == "br":
            self._runs.append((bool(self._bold), "\n"))

    def handle_endtag(self, tag: str) -> None:
        if tag in self.BLOCKS:
            self._flush()
        elif tag == "b":
            self._bold = max(0, self._bold - 1)

    def handle_data(self, data: str) -> None:
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

    def close(self) -> None:
        super().close()
        self._flush()


def parse_blocks(markup: str) -> list[tuple[str, list[tuple[bool, str]]]]:
    """Markup → blocks of (bold, text) runs. The templates' own subset (bare ``h1 h2 p li b br`` tags, escaped
    text) is tokenised directly; anything else (attributes, comments, a stray ``<``) goes through
    :class:`html.parser.HTMLParser`, which the fast path matches block for block on the subset (tested)."""
    fast = _parse_subset(markup)
    if fast is not None:
        return fast
    return _parse_html(markup)


def _parse_html(markup: str) -> list[tuple[str, list[tuple[bool, str]]]]:
    parser = _Blocks()
    parser.feed(markup)
    parser.close()
    return parser.blocks


#: a bare tag (no attributes): the only markup the fast path accepts
_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9]*)\s*(/?)>")
_CDATA_TAGS = {"script", "style"}   # HTMLParser reads their content as raw text: leave those to it


def _parse_subset(markup: str) -> list[tuple[str, list[tuple[bool, str]]]] | None:
    """The same blocks as :class:`_Blocks` for markup made only of bare tags and text without ``<``/``>``;
    None for anything else. Why: HTMLParser is a fifth of a letter's rendering time."""
    from html import unescape

    parser = _Blocks()
    pos = 0
    for m in _TAG.finditer(markup):
        if m.start() > pos:
            text = markup[pos:m.start()]
            if "<" in text or ">" in text:
                return None
            parser.handle_data(unescape(text) if "&" in text else text)
        end, name, self_closing = m.group(1), m.group(2).lower(), m.group(3)
        if name in _CDATA_TAGS or (end and self_closing):
            return None
        if end:
            parser.handle_endtag(name)
        else:
            parser.handle_starttag(name, [])
            if self_closing:
                parser.handle_endtag(name)
        pos = m.end()
    if pos < len(markup):
        text = markup[pos:]
        if "<" in text or ">" in text:
            return None
        parser.handle_data(unescape(text) if "&" in text else text)
    parser._flush()
    return parser.blocks


def html_to_pdf(markup: str, *, title: str = "Letter", created: _dt.datetime | None = None) -> bytes:
    """A PDF of ``markup`` (the template subset above), created at ``created`` (default: now, UTC): the same
    markup and time give the same bytes."""
    pdf = FPDF(format="A4")
    pdf.core_fonts_encoding = CORE_ENCODING
    pdf.set_creation_date(created or _dt.datetime.now(_dt.UTC))
    pdf.set_title(title)
    pdf.set_creator("Caldicott")
    pdf.set_margins(20, 18, 20)
    pdf.set_auto_page_break(True, margin=18)
    blocks = parse_blocks(markup)
    core = _fits_core(blocks)
    if not core:
        _attach_fonts(pdf, {face_for(c) for _, runs in blocks for _, text in runs for c in set(text)} | {FAMILY})
    pdf.add_page()
    width = pdf.w - pdf.l_margin - pdf.r_margin
    bottom = pdf.h - 18
    y = pdf.t_margin
    font: tuple[str, str, float] | None = None   # set_font only when it changes (it is not free in fpdf2)
    for tag, runs in blocks:
        size, gap = {"h1": (15, 3), "h2": (12, 2)}.get(tag, (10.5, 2))
        height = size * 0.5
        if tag in ("h1", "h2"):
            y += 1
            runs = [(True, t) for _, t in runs]
        if tag == "li":
            runs = [(False, "•  "), *runs]
        for line in _wrap(runs, size, width, core):
            if y + height > bottom:
                pdf.add_page()
                y = pdf.t_margin
            x = pdf.l_margin
            for bold, text, w in line:
                style = "B" if bold else ""
                pieces = [(CORE, text)] if core else _face_runs(_visual(text))
                for family, piece in pieces:
                    if font != (family, style, size):
                        font = (family, style, size)
                        pdf.set_font(family, style, size)
                    _text(pdf, x, y + height * 0.78, piece)
                    x += (w if core else _word_width(False, bold, piece) * size)
            y += height
        y += gap
    return bytes(pdf.output())


def _text(pdf: FPDF, x: float, y: float, text: str) -> None:
    """``pdf.text(x, y, text)``, writing the same content-stream bytes without its per-call wrappers (deprecation
    shim, page check, state tests): a letter makes ~40 of these calls, a fifth of its rendering. Falls back to
    ``pdf.text`` whenever the document uses anything this path does not reproduce (text modes, underline,
    strike-through, text quad points, a text colour other than the fill colour)."""
    if (pdf.text_mode != _FILL or pdf.underline or pdf.strikethrough or pdf._record_text_quad_points
            or pdf.fill_color != pdf.text_color or pdf.current_font is None or not pdf.page):
        pdf.text(x, y, text)
        return
    text = pdf.normalize_text(text)
    if not pdf.current_font_is_set_on_page:
        pdf._out(pdf._set_font_for_page(pdf.current_font, pdf.font_size_pt))
    pdf._out(f"BT {x * pdf.k:.2f} {(pdf.h - y) * pdf.k:.2f} Td {pdf.current_font.encode_text(text)} ET")


def _fits_core(blocks: list[tuple[str, list[tuple[bool, str]]]]) -> bool:
    """Every character of ``blocks`` is in Windows-1252, so the letter can be set in the core font (nothing
    embedded)."""
    try:
        for _, runs in blocks:
            for _, text in runs:
                text.encode(CORE_ENCODING)
    except UnicodeEncodeError:
        return False
    return True


_RTL = re.compile("[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufefc]")


def _visual(text: str) -> str:
    """``text`` in display order: right-to-left runs reversed by the Unicode bidi algorithm (LTR paragraph)."""
    if not _RTL.search(text):
        return text
    from fpdf.bidi import BidiParagraph
    from fpdf.enums import TextDirection

    return BidiParagraph(text, base_direction=TextDirection.LTR).get_reordered_string()


def _face_runs(text: str) -> list[tuple[str, str]]:
    """Split ``text`` into runs set in one face each."""
    runs: list[tuple[str, str]] = []
    for ch in text:
        face = face_for(ch) if not ch.isspace() else (runs[-1][0] if runs else FAMILY)
        if runs and runs[-1][0] == face:
            runs[-1] = (face, runs[-1][1] + ch)
        else:
            runs.append((face, ch))
    return runs


@functools.cache
def _core_widths(bold: bool) -> dict[str, float]:
    """Glyph advance per character of Helvetica (font units per 1000 em), for every Windows-1252 character."""
    from fpdf.fonts import CORE_FONTS_CHARWIDTHS

    cw = CORE_FONTS_CHARWIDTHS[CORE + ("B" if bold else "")]
    table: dict[str, float] = {}
    for i in range(256):
        try:
            ch = bytes([i]).decode(CORE_ENCODING)
        except UnicodeDecodeError:
            continue
        table[ch] = cw[chr(i)]
    return table


@functools.lru_cache(maxsize=100_000)
def _char_width(bold: bool, ch: str) -> float:
    """Advance of ``ch`` in the Unicode face that sets it (font units per 1000 em)."""
    proto = _prototype(face_for(ch), bold)
    return proto.cw[ord(ch)] if ord(ch) in proto.cmap else proto.cw[ord("?")]


@functools.lru_cache(maxsize=50_000)
def _word_width(core: bool, bold: bool, word: str) -> float:
    """Width of ``word`` at 1 pt, in mm (words repeat across letters: cached)."""
    if core:
        table = _core_widths(bold)
        default = table.get("?", 500)
        units = sum(table.get(c, default) for c in word)
    else:
        units = sum(_char_width(bold, c) for c in word)
    return units / 1000 * 25.4 / 72


def _wrap(runs: list[tuple[bool, str]], size: float, width: float,
          core: bool) -> list[list[tuple[bool, str, float]]]:
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
            w = _word_width(core, bold, word) * size
            if line and used + _word_width(core, bold, word.rstrip()) * size > width:
                lines.append(line)
                line, used = [], 0.0
                word = word.lstrip()
                if not word:
                    continue
                w = _word_width(core, bold, word) * size
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

