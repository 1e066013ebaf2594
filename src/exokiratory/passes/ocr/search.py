"""Full-text search over the ``ocr`` view (``exokiratory search --ocr "words"``), offline.

The query is split into words (letters and digits, lower-cased). An image matches when its
text holds at least one of them as a whole word (case-insensitive); results are ranked by the
number of distinct query words found, then whether the whole query appears as a phrase, then
the total number of occurrences, then ``image_idx``. ``score`` = words found / query words.
``snippet`` is the text around the first occurrence.

DuckDB's ``fts`` extension (BM25) needs a download (``INSTALL fts``) and so is not used here;
with network access the recipe is::

    INSTALL fts; LOAD fts;
    CREATE TABLE ocr_docs AS SELECT image_id, text FROM ocr WHERE error IS NULL;
    PRAGMA create_fts_index('ocr_docs', 'image_id', 'text');
    SELECT image_id, fts_main_ocr_docs.match_bm25(image_id, 'invoice total') AS score
    FROM ocr_docs WHERE score IS NOT NULL ORDER BY score DESC LIMIT 10;
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog

_WORD = re.compile(r"\w+", re.UNICODE)
SNIPPET_CHARS = 60


def query_words(query: str) -> list[str]:
    """Distinct lower-case words of a query, in order."""
    return list(dict.fromkeys(w.lower() for w in _WORD.findall(query)))


def search_ocr(catalog: Catalog, query: str, k: int = 10) -> pa.Table:
    """The ``k`` best images for ``query`` (see the module docstring): rank, score, image_id,
    image_idx, first_path, snippet.

    Raises:
        ValueError: a query without any word, or a workspace without the ``ocr`` view.
    """
    words = query_words(query)
    if not words:
        raise ValueError("an OCR search needs at least one word")
    if "ocr" not in catalog.views:
        raise ValueError("no OCR yet: run `exokiratory run ocr` first")
    patterns = [r"\b" + re.escape(w) + r"\b" for w in words]
    found = " + ".join("CAST(regexp_matches(t, ?) AS INTEGER)" for _ in patterns)
    hits = " + ".join("len(regexp_extract_all(t, ?))" for _ in patterns)
    phrase = r"\b" + r"\W+".join(re.escape(w) for w in words) + r"\b"
    sql = f"""
WITH docs AS (SELECT image_id, image_idx, text, lower(text) AS t FROM ocr
              WHERE error IS NULL AND text <> ''),
scored AS (SELECT image_id, image_idx, text, t, {found} AS n_found, {hits} AS n_hits,
                  regexp_matches(t, ?) AS is_phrase FROM docs)
SELECT CAST(row_number() OVER (ORDER BY n_found DESC, is_phrase DESC, n_hits DESC, s.image_idx)
            AS INTEGER) AS rank,
       CAST(n_found AS DOUBLE) / {len(words)} AS score, s.image_id, s.image_idx, i.first_path,
       substr(s.text, greatest(1, instr(s.t, ?) - {SNIPPET_CHARS}), {2 * SNIPPET_CHARS + 20})
         AS snippet
FROM scored s JOIN images i USING (image_id)
WHERE n_found > 0
ORDER BY rank
LIMIT {int(k)}
"""
    params: list[object] = [*patterns, *patterns, phrase, words[0]]
    return catalog.query(sql, params)
