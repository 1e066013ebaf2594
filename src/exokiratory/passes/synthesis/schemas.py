"""The tables of PASS 7 (one catalog view each; definitions in the modules named)."""

from __future__ import annotations

import pyarrow as pa

F32, F64, I32, I64, STR, BOOL = (
    pa.float32(),
    pa.float64(),
    pa.int32(),
    pa.int64(),
    pa.string(),
    pa.bool_(),
)

NOTES_SCHEMA = pa.schema(
    [
        pa.field("part", STR, nullable=False),
        pa.field("status", STR, nullable=False),  # ok | skipped | partial
        pa.field("n", I64),
        pa.field("detail", STR),
    ]
)
"""``<step>_notes``: what each part of a derivation computed, or why it skipped it
("run X first")."""

MOTIF_BAGS_SCHEMA = pa.schema(
    [
        pa.field("image_id", STR, nullable=False),
        pa.field("image_idx", I64, nullable=False),
        pa.field("space", STR, nullable=False),
        pa.field("n_segments", I32),
        pa.field("n_motifs", I32),
        pa.field("motif_ids", pa.list_(I32)),
        pa.field("motif_counts", pa.list_(I32)),
        pa.field("motif_areas", pa.list_(F32)),
        pa.field("tfidf", pa.list_(F32)),
        pa.field("infrastructure_share", F32),
        pa.field("foreground_share", F32),
        pa.field("rare_share", F32),
        pa.field("infrastructure_area_share", F32),
        pa.field("foreground_area_share", F32),
        pa.field("bag_cluster_id", I32),
        # per-image aggregates of other passes, null where they did not run
        pa.field("depth_p50", F32),
        pa.field("near_fraction", F32),
        pa.field("far_fraction", F32),
        pa.field("depth_layering_score", F32),
        pa.field("infrastructure_depth", F32),
        pa.field("foreground_depth", F32),
        pa.field("ocr_n_chars", I32),
        pa.field("ocr_text_area_fraction", F32),
        pa.field("n_detections", I32),
        pa.field("top_detection_label", STR),
    ]
)
"""View ``motif_bags``: one row per image and space (:mod:`.bags`; the aggregates in
:mod:`.step`)."""

MOTIF_FREQUENCY_SCHEMA = pa.schema(
    [
        pa.field("space", STR, nullable=False),
        pa.field("motif_id", I32, nullable=False),
        pa.field("group_kind", STR, nullable=False),  # all | clusters_clip | clusters_dino
        pa.field("level", pa.int8()),
        pa.field("group_id", I32),
        pa.field("n_images", I64),  # images of the group (with a bag in this space)
        pa.field("n_images_with", I64),  # of them, holding the motif
        pa.field("n_segments", I64),
        pa.field("image_fraction", F32),
        pa.field("lift", F32),  # image_fraction / the motif's fraction over all images
        pa.field("is_infrastructure", BOOL),
    ]
)
"""View ``motif_frequency``: per motif, overall (``group_kind = 'all'``) and per image cluster."""

MOTIF_COOCCURRENCE_SCHEMA = pa.schema(
    [
        pa.field("space", STR, nullable=False),
        pa.field("motif_a", I32, nullable=False),
        pa.field("motif_b", I32, nullable=False),
        pa.field("n_images", I64),
        pa.field("count", I64),
        pa.field("count_a", I64),
        pa.field("count_b", I64),
        pa.field("pmi", F32),
        pa.field("npmi", F32),
        pa.field("expected", F32),
        pa.field("expected_std", F32),
        pa.field("z_score", F32),
        pa.field("p_value", F32),
        pa.field("n_shuffles", I32),
        pa.field("is_significant", BOOL),
    ]
)
"""View ``motif_cooccurrence``: the edges (:mod:`.cooccur`)."""

MOTIF_COMMUNITIES_SCHEMA = pa.schema(
    [
        pa.field("space", STR, nullable=False),
        pa.field("motif_id", I32, nullable=False),
        pa.field("community_id", I32),
        pa.field("community_size", I32),
        pa.field("n_images", I64),
        pa.field("degree", I32),
        pa.field("strength", F32),
        pa.field("is_infrastructure", BOOL),
        pa.field("is_rare_motif", BOOL),
        pa.field("method", STR),
        pa.field("modularity", F32),
    ]
)
"""View ``motif_communities``: the nodes (:mod:`.communities`)."""

CAPTION_CLUSTERS_SCHEMA = pa.schema(
    [
        pa.field("image_id", STR, nullable=False),
        pa.field("image_idx", I64, nullable=False),
        pa.field("k", I32),
        pa.field("cluster_id", I32),
        pa.field("similarity", F32),
        pa.field("n_captions", I32),
        pa.field("model_id", STR),
    ]
)
"""View ``caption_clusters``: images clustered by the CLIP text embedding of their captions."""

AGREEMENT_SCHEMA = pa.schema(
    [
        pa.field("comparison_id", STR, nullable=False),
        pa.field("kind", STR, nullable=False),
        pa.field("unit", STR),  # image | segment
        pa.field("left_clustering", STR),
        pa.field("left_level", pa.int8()),
        pa.field("right_clustering", STR),
        pa.field("right_level", pa.int8()),
        pa.field("n", I64),
        pa.field("k_left", I32),
        pa.field("k_right", I32),
        pa.field("ari", F64),
        pa.field("ari_baseline", F64),
        pa.field("ari_baseline_std", F64),
        pa.field("ari_z", F64),
        pa.field("ami", F64),
        pa.field("ami_baseline", F64),
        pa.field("ami_baseline_std", F64),
        pa.field("n_shuffles", I32),
        pa.field("n_split", I32),
        pa.field("n_merged", I32),
        pa.field("is_above_baseline", BOOL),
        pa.field("random_weight_models", STR),
    ]
)
"""View ``structure_agreement``: one row per comparison (:mod:`.agreement`)."""

CONTINGENCY_SCHEMA = pa.schema(
    [
        pa.field("comparison_id", STR, nullable=False),
        pa.field("kind", STR),
        pa.field("left_cluster", I32),
        pa.field("right_cluster", I32),
        pa.field("n", I64),
        pa.field("left_size", I64),
        pa.field("right_size", I64),
        pa.field("left_fraction", F32),
        pa.field("right_fraction", F32),
    ]
)
"""View ``structure_contingency``."""

MAPPING_SCHEMA = pa.schema(
    [
        pa.field("comparison_id", STR, nullable=False),
        pa.field("kind", STR),
        pa.field("left_cluster", I32),
        pa.field("left_size", I64),
        pa.field("best_right_cluster", I32),
        pa.field("best_fraction", F32),
        pa.field("n_major", I32),
        pa.field("is_split", BOOL),
        pa.field("is_merged", BOOL),
    ]
)
"""View ``structure_mapping``: where each left cluster goes; merges and splits."""

TERMS_SCHEMA = pa.schema(
    [
        pa.field("clustering", STR, nullable=False),  # clusters_clip | clusters_dino | ...
        pa.field("level", pa.int8()),
        pa.field("cluster_id", I32),
        pa.field("n_images", I64),
        pa.field("n_captions", I64),
        pa.field("mean_clip_score", F32),
        pa.field("rank", I32),
        pa.field("term", STR),
        pa.field("term_count", I64),
        pa.field("score", F32),
    ]
)
"""View ``caption_terms``: distinctive terms per structural cluster (:mod:`.terms`)."""
