"""Communities of the motif co-occurrence graph, and its GraphML export.

The graph of one space: a node per motif held by at least ``min_motif_images`` images; an
edge per *significant positive* association (``z_score >= significance_z`` against the
shuffled baseline and ``npmi > 0``), weighted by its ``npmi``.

Community detection, in order of preference (``method="auto"``):

1. **Leiden** (Traag et al. 2019) through ``igraph`` + ``leidenalg`` (the ``synthesis`` extra):
   ``RBConfigurationVertexPartition`` (modularity with a ``resolution``), seeded;
2. without them, ``networkx``'s greedy modularity (Clauset-Newman-Moore), deterministic;
3. without either, connected components (logged: install ``exokiratory[synthesis]``).

Communities are renumbered by size (largest first; ties: the one holding the lowest motif id
first), so ids do not depend on the library's internal order. Isolated motifs are communities
of their own.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import numpy as np

log = logging.getLogger(__name__)

LEIDEN_MODULES = ("igraph", "leidenalg")


@dataclass(frozen=True)
class Communities:
    membership: np.ndarray  # community id of each node (0 = largest)
    method: str  # leiden | greedy_modularity | components
    modularity: float | None


def available_method(method: str) -> str:
    """The method that will run for ``method`` (auto: the best installed one)."""
    leiden = all(importlib.util.find_spec(m) is not None for m in LEIDEN_MODULES)
    nx = importlib.util.find_spec("networkx") is not None
    if method == "leiden" and not leiden:
        raise RuntimeError(
            "community method leiden needs igraph and leidenalg: "
            "pip install 'exokiratory[synthesis]'"
        )
    if method == "greedy_modularity" and not nx:
        raise RuntimeError(
            "community method greedy_modularity needs networkx: pip install networkx"
        )
    if method != "auto":
        return method
    if leiden:
        return "leiden"
    log.warning(
        "igraph/leidenalg not installed (pip install 'exokiratory[synthesis]'): motif "
        "communities use %s instead of Leiden",
        "networkx greedy modularity" if nx else "connected components",
    )
    return "greedy_modularity" if nx else "components"


def renumber(membership: np.ndarray) -> np.ndarray:
    """Community ids by size (largest first), ties by lowest member."""
    labels, inverse = np.unique(membership, return_inverse=True)
    k = len(labels)
    sizes = np.bincount(inverse, minlength=k)
    first = np.full(k, len(membership), np.int64)
    np.minimum.at(first, inverse, np.arange(len(membership)))
    order = np.lexsort((first, -sizes))
    new = np.empty(k, np.int32)
    new[order] = np.arange(k, dtype=np.int32)
    return new[inverse]


def find_communities(
    n_nodes: int,
    a: np.ndarray,
    b: np.ndarray,
    weight: np.ndarray,
    *,
    method: str = "auto",
    resolution: float = 1.0,
    seed: int = 0,
) -> Communities:
    """Communities of the weighted undirected graph on nodes ``0..n_nodes-1``."""
    if n_nodes == 0:
        return Communities(np.zeros(0, np.int32), available_method(method), None)
    used = available_method(method)
    if used == "leiden":
        member, q = _leiden(n_nodes, a, b, weight, resolution, seed)
    elif used == "greedy_modularity":
        member, q = _greedy(n_nodes, a, b, weight, resolution)
    else:
        member, q = _components(n_nodes, a, b), None
    return Communities(renumber(member), used, q)


def _leiden(
    n: int, a: np.ndarray, b: np.ndarray, w: np.ndarray, resolution: float, seed: int
) -> tuple[np.ndarray, float | None]:
    import igraph
    import leidenalg

    g = igraph.Graph(n=n, edges=list(zip(a.tolist(), b.tolist(), strict=True)))
    g.es["weight"] = w.astype(float).tolist()
    part = leidenalg.find_partition(
        g,
        leidenalg.RBConfigurationVertexPartition,
        weights="weight" if len(w) else None,
        resolution_parameter=resolution,
        n_iterations=-1,
        seed=seed,
    )
    member = np.asarray(part.membership, np.int64)
    q = float(g.modularity(member.tolist(), weights="weight")) if len(w) else None
    return member, q


def _greedy(
    n: int, a: np.ndarray, b: np.ndarray, w: np.ndarray, resolution: float
) -> tuple[np.ndarray, float | None]:
    import networkx as nx

    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_weighted_edges_from(zip(a.tolist(), b.tolist(), w.astype(float).tolist(), strict=True))
    member = np.arange(n, dtype=np.int64)
    if g.number_of_edges() == 0:
        return member, None
    parts = nx.community.greedy_modularity_communities(g, weight="weight", resolution=resolution)
    for i, nodes in enumerate(parts):
        member[sorted(nodes)] = i
    q = float(nx.community.modularity(g, parts, weight="weight", resolution=resolution))
    return member, q


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy import sparse
    from scipy.sparse.csgraph import connected_components

    m = sparse.coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    _, labels = connected_components(m, directed=False)
    return labels.astype(np.int64)


# -- GraphML ----------------------------------------------------------------------------------
_TYPES = {bool: "boolean", int: "long", float: "double", str: "string"}


def _graphml_type(values: Sequence[Any]) -> str:
    for v in values:
        if v is not None:
            return _TYPES.get(type(v), "string")
    return "string"


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(float(v))
    return escape(str(v))


def graphml(
    nodes: Mapping[str, Sequence[Any]],
    edges: Mapping[str, Sequence[Any]],
    *,
    node_id: str = "id",
    source: str = "source",
    target: str = "target",
    graph_id: str = "motifs",
) -> bytes:
    """An undirected GraphML document (Gephi, Cytoscape, igraph, networkx read it) from
    column dicts: ``nodes[node_id]`` names the nodes, ``edges[source]`` / ``edges[target]``
    their ends; every other column becomes an attribute (null values are left out)."""
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<graphml xmlns="http://graphml.graphdrawing.org/xmlns" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xsi:schemaLocation="http://graphml.graphdrawing.org/xmlns '
        'http://graphml.graphdrawing.org/xmlns/1.0/graphml.xsd">',
    ]
    node_attrs = [c for c in nodes if c != node_id]
    edge_attrs = [c for c in edges if c not in (source, target)]
    for kind, attrs, cols in (("node", node_attrs, nodes), ("edge", edge_attrs, edges)):
        for c in attrs:
            lines.append(
                f"  <key id={quoteattr(f'{kind[0]}_{c}')} for={quoteattr(kind)} "
                f"attr.name={quoteattr(c)} attr.type={quoteattr(_graphml_type(cols[c]))}/>"
            )
    lines.append(f'  <graph id={quoteattr(graph_id)} edgedefault="undirected">')
    node_data = _data_lines("n", node_attrs, nodes, len(nodes[node_id]))
    for nid, data in zip(nodes[node_id], node_data, strict=True):
        lines.append(f"    <node id={quoteattr(str(nid))}>{data}</node>")
    edge_data = _data_lines("e", edge_attrs, edges, len(edges[source]))
    for s, t, data in zip(edges[source], edges[target], edge_data, strict=True):
        lines.append(
            f"    <edge source={quoteattr(str(s))} target={quoteattr(str(t))}>{data}</edge>"
        )
    lines += ["  </graph>", "</graphml>", ""]
    return "\n".join(lines).encode("utf-8")


def _data_lines(
    prefix: str, attrs: list[str], cols: Mapping[str, Sequence[Any]], n: int
) -> list[str]:
    """The ``<data>`` elements of every row, one string per row (a column at a time)."""
    out = [""] * n
    for c in attrs:
        head = f'<data key="{escape(f"{prefix}_{c}")}">'
        for i, v in enumerate(cols[c]):
            if v is None or (isinstance(v, float) and not math.isfinite(v)):
                continue
            out[i] += f"{head}{_value(v)}</data>"
    return out
