"""PASS 7, re-aggregation and synthesis: "collapse upward without lying".

Three derivations (no pixels; seconds to minutes; re-derived when an input changes), each
writing a ``*_notes`` table that says what every part computed or why it was skipped ("run X
first"); each works with whatever of PASS 4-6 exists:

* ``motif-bags`` (``synthesis/motif_bags/``): views ``motif_bags`` (one row per image and
  space), ``motif_frequency``, ``motif_cooccurrence`` (edges), ``motif_communities`` (nodes),
  ``motif_bags_notes``; the co-occurrence graph of each space (every motif, the significant
  edges) also as GraphML, ``motif_cooccurrence_<space>.graphml`` in the current output folder
  (for Gephi and Cytoscape; :func:`graphml_paths` lists them). Definitions:
  :mod:`.motif_tables`.
* ``caption-clusters`` (``synthesis/caption_clusters/``): view ``caption_clusters``
  (:mod:`.captions`) and ``caption_clusters_notes``.
* ``structure-agreement`` (``synthesis/agreement/``): views ``structure_agreement`` (one row per
  comparison, statistic and shuffled-label baseline in columns of their own),
  ``structure_contingency``, ``structure_mapping`` (merges and splits), ``caption_terms``,
  ``structure_agreement_notes`` (:mod:`.compare`).

``exokiratory run synthesis`` runs the three.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pyarrow as pa

from exokiratory.engine.registry import register, register_alias
from exokiratory.passes.synthesis.base import Notes, SynthesisDerivation
from exokiratory.passes.synthesis.captions import CaptionClustersParams, derive_caption_clusters
from exokiratory.passes.synthesis.compare import AgreementParams, caption_terms, compare
from exokiratory.passes.synthesis.motif_tables import MotifBagsParams, derive_motif_tables
from exokiratory.passes.synthesis.schemas import (
    AGREEMENT_SCHEMA,
    CAPTION_CLUSTERS_SCHEMA,
    CONTINGENCY_SCHEMA,
    MAPPING_SCHEMA,
    MOTIF_BAGS_SCHEMA,
    MOTIF_COMMUNITIES_SCHEMA,
    MOTIF_COOCCURRENCE_SCHEMA,
    MOTIF_FREQUENCY_SCHEMA,
    NOTES_SCHEMA,
    TERMS_SCHEMA,
)

if TYPE_CHECKING:
    from exokiratory.core.catalog import Catalog
    from exokiratory.core.storage import Storage

log = logging.getLogger(__name__)

GRAPHML_NAME = "motif_cooccurrence_{space}.graphml"


@register
class MotifBagsDerivation(SynthesisDerivation[MotifBagsParams]):
    name = "motif-bags"
    dataset = "synthesis/motif_bags"
    version = "v1"
    reads = ("motifs", "segment-embed-clip", "segment-embed-dino", "clusters-clip", "clusters-dino")
    optional_reads = ("segment", "depth", "depth-segments", "ocr", "detect")
    Params = MotifBagsParams
    description = "PASS 7 motif bags per image, motif frequencies, co-occurrence graph"
    table_views = {
        "": "motif_bags",
        "frequency": "motif_frequency",
        "cooccurrence": "motif_cooccurrence",
        "communities": "motif_communities",
        "notes": "motif_bags_notes",
    }

    def output_schema(self) -> pa.Schema:
        return MOTIF_BAGS_SCHEMA

    def extra_schemas(self) -> dict[str, pa.Schema]:
        return {
            "frequency": MOTIF_FREQUENCY_SCHEMA,
            "cooccurrence": MOTIF_COOCCURRENCE_SCHEMA,
            "communities": MOTIF_COMMUNITIES_SCHEMA,
            "notes": NOTES_SCHEMA,
        }

    def derive_outputs(self, catalog: Catalog) -> dict[str, pa.Table]:
        notes = Notes()
        tables, docs = derive_motif_tables(catalog, self.params, notes)
        folder = self.output_folder(catalog)
        for space, doc in docs.items():  # beside the tables, before the pointer moves
            catalog.storage.write_bytes_atomic(f"{folder}/{GRAPHML_NAME.format(space=space)}", doc)
        log.info(
            "motif-bags: %d image bags, %d edges",
            tables[""].num_rows,
            tables["cooccurrence"].num_rows,
        )
        notes.log_skipped(self.name, tables[""].num_rows)
        return {**tables, "notes": notes.table()}


def graphml_paths(storage: Storage) -> list[str]:
    """The GraphML files of the current ``motif-bags`` output (workspace-relative paths)."""
    from exokiratory.core.dataset import current_folder

    folder = current_folder(storage, MotifBagsDerivation.dataset)
    if folder is None:
        return []
    return sorted(p for p in storage.list_files(folder, ".graphml"))


@register
class CaptionClustersDerivation(SynthesisDerivation[CaptionClustersParams]):
    name = "caption-clusters"
    dataset = "synthesis/caption_clusters"
    version = "v1"
    reads = ("caption-embed",)
    Params = CaptionClustersParams
    description = "PASS 7 images clustered by the CLIP text embeddings of their captions"
    table_views = {"": "caption_clusters", "notes": "caption_clusters_notes"}

    def output_schema(self) -> pa.Schema:
        return CAPTION_CLUSTERS_SCHEMA

    def extra_schemas(self) -> dict[str, pa.Schema]:
        return {"notes": NOTES_SCHEMA}

    def derive_outputs(self, catalog: Catalog) -> dict[str, pa.Table]:
        notes = Notes()
        table = derive_caption_clusters(catalog, self.params, notes)
        notes.log_skipped(self.name, table.num_rows)
        return {"": table, "notes": notes.table()}


@register
class StructureAgreementDerivation(SynthesisDerivation[AgreementParams]):
    name = "structure-agreement"
    dataset = "synthesis/agreement"
    version = "v1"
    reads = (
        "motif-bags",
        "caption-clusters",
        "clusters-clip",
        "clusters-dino",
        "motifs",
        "embed-clip",
        "embed-dino",
    )
    optional_reads = ("caption-factual", "caption-dense", "caption-embed")
    Params = AgreementParams
    description = "PASS 7 image vs segment vs language agreement, with shuffled baselines"
    table_views = {
        "": "structure_agreement",
        "contingency": "structure_contingency",
        "mapping": "structure_mapping",
        "terms": "caption_terms",
        "notes": "structure_agreement_notes",
    }

    def output_schema(self) -> pa.Schema:
        return AGREEMENT_SCHEMA

    def extra_schemas(self) -> dict[str, pa.Schema]:
        return {
            "contingency": CONTINGENCY_SCHEMA,
            "mapping": MAPPING_SCHEMA,
            "terms": TERMS_SCHEMA,
            "notes": NOTES_SCHEMA,
        }

    def derive_outputs(self, catalog: Catalog) -> dict[str, pa.Table]:
        notes = Notes()
        agreement, cells, mapping, labelings = compare(catalog, self.params, notes)
        terms = caption_terms(catalog, labelings, self.params, notes)
        log.info("structure-agreement: %d comparisons", agreement.num_rows)
        notes.log_skipped(self.name, agreement.num_rows)
        return {
            "": agreement,
            "contingency": cells,
            "mapping": mapping,
            "terms": terms,
            "notes": notes.table(),
        }


register_alias("synthesis", ("motif-bags", "caption-clusters", "structure-agreement"))
