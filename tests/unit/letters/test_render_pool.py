"""Letters rendered in the worker process (``caldicott.letters.render_pool``) are the letters rendered inline, in the
same order; a letter that fails to render fails where it stands, after the letters before it; the markup tokeniser
gives HTMLParser's blocks. No timing is asserted."""

from __future__ import annotations

import dataclasses

import pytest
from caldicott.letters import pdf, render_pool
from caldicott.letters.pdf import pdf_text

from .test_letters_render import SERVICE, _letter


@pytest.fixture
def pooled(monkeypatch):
    monkeypatch.setenv("CALDICOTT_RENDER_POOL_MIN", "1")
    monkeypatch.setenv("CALDICOTT_RENDER_PROCESSES", "1")


def test_pooled_letters_are_the_inline_letters_in_order(pooled):
    letters = [(_letter(given=f"Ann{i}", family="Lee", event="discharge" if i % 3 else "assessment"),
                "gp" if i % 2 else "patient") for i in range(3 * render_pool.GROUP + 3)]
    got = list(render_pool.render_pdfs(letters, SERVICE, count=len(letters)))
    assert render_pool.worker_pids(), "the pool was not used"
    inline = list(render_pool._inline(letters, SERVICE))
    assert [pdf_text(p) for p, _ in got] == [pdf_text(p) for p, _ in inline]
    assert all(created.tzinfo is not None for _, created in got)


def test_a_letter_that_cannot_render_fails_after_the_letters_before_it(pooled):
    letters = [(_letter(given=f"Ann{i}", family="Lee"), "gp") for i in range(render_pool.GROUP + 4)]
    broken = render_pool.GROUP + 2                      # in the second group, after two good letters of it
    letters[broken] = (dataclasses.replace(letters[broken][0], event="no-such-letter"), "gp")
    out = []
    with pytest.raises(Exception, match="no-such-letter"):
        for p, _ in render_pool.render_pdfs(letters, SERVICE, count=len(letters)):
            out.append(p)
    assert len(out) == broken


def test_small_batches_render_inline(monkeypatch):
    monkeypatch.setenv("CALDICOTT_RENDER_POOL_MIN", "1000")
    monkeypatch.setattr(render_pool, "_get_pool", lambda size: pytest.fail("no pool for a small batch"))
    letters = [(_letter(given="Ann", family="Lee"), "gp")]
    (got,) = list(render_pool.render_pdfs(letters, SERVICE, count=1))
    assert "Ann" in pdf_text(got[0])


@pytest.mark.parametrize("markup", [
    "<p>a &lt;script&gt; b &amp; c&#10;d</p>", "text before<p>x</p>tail",
    "<p>\n  many   spaces\n</p><li>one<b>two</b></li><br/><p/>", "<h1>T</h1><h2>S</h2><p>a<br>b</p>",
    "<p class='x'>attr</p>", "<!-- c --><p>x</p>", "a < b",
    "<p>x</P>", "<b><b>x</b></b>y", "&amp;", "  ", "", "<script>x</script><p>y</p>",
])
def test_markup_tokeniser_gives_htmlparsers_blocks(markup):
    assert pdf.parse_blocks(markup) == pdf._parse_html(markup)
