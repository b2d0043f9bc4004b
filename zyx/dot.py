"""A tiny Graphviz DOT writer: nodes, edges and filled clusters, quoted safely. Enough for `zyx.viz`."""
from __future__ import annotations

from dataclasses import dataclass, field


def quote(text: str) -> str:
    """A DOT string literal (quotes and backslashes escaped; a newline becomes a centred line break)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _attributes(attributes: dict[str, str]) -> str:
    return ", ".join(f"{key}={quote(value)}" for key, value in attributes.items())


@dataclass
class Cluster:
    label: str
    color: str
    nodes: list[tuple[str, dict[str, str]]] = field(default_factory=list)


@dataclass
class DotGraph:
    """Build with `node`, `edge` and `cluster`; `text()` is the DOT source."""

    name: str = "zyx"
    nodes: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    edges: list[tuple[str, str]] = field(default_factory=list)
    clusters: list[Cluster] = field(default_factory=list)

    def cluster(self, label: str, color: str) -> Cluster:
        self.clusters.append(Cluster(label, color))
        return self.clusters[-1]

    def node(self, name: str, label: str, cluster: Cluster | None = None, **attributes: str) -> None:
        (cluster.nodes if cluster is not None else self.nodes).append((name, {"label": label, **attributes}))

    def edge(self, source: str, target: str) -> None:
        self.edges.append((source, target))

    def text(self) -> str:
        lines = [f"digraph {quote(self.name)} {{", '  rankdir="TB";',
                 '  node [fontname="Helvetica", fontsize="10", style="filled", fillcolor="white"];']
        for index, cluster in enumerate(self.clusters):
            lines.append(f"  subgraph cluster_{index} {{")
            lines.append(f"    graph [{_attributes({'label': cluster.label, 'style': 'filled', 'fillcolor': cluster.color})}];")
            lines.extend(f"    {quote(name)} [{_attributes(attrs)}];" for name, attrs in cluster.nodes)
            lines.append("  }")
        lines.extend(f"  {quote(name)} [{_attributes(attrs)}];" for name, attrs in self.nodes)
        lines.extend(f"  {quote(source)} -> {quote(target)};" for source, target in dict.fromkeys(self.edges))
        lines.append("}")
        return "\n".join(lines) + "\n"
