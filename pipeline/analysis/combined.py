"""``combined``: a SOM of the GWPCA local loadings, as the older system's combined method.

Clustering the loadings groups places by *how* the variables co-vary locally
rather than by their values. The GWPCA table comes from the ``gwpca`` method if
it ran earlier in this run; otherwise GWPCA runs here first under the prefix
``combined_gwpca``. The SOM then runs on the loading columns
(``pc1_<column>`` … ``pcK_<column>``; loadings are sign-normalised by GWPCA, so
the same local structure gives the same vector everywhere), and its cluster map
is written on GWPCA's evaluation grid (the target grid strided by
``gwpca.subsample``).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.analysis.gwpca import run_gwpca
from pipeline.analysis.io import Variables
from pipeline.analysis.runtime import MethodRun
from pipeline.analysis.som import run_som

#: Prefix of the GWPCA outputs computed by ``combined`` itself.
OWN_GWPCA_PREFIX = "combined_gwpca"
#: File name suffix of the GWPCA local table (see gwpca._finalize).
LOCAL_TABLE = "local.parquet"


def run_combined(run: MethodRun) -> list[Path]:
    config = run.ctx.config.analysis.gwpca
    outputs: list[Path] = []
    earlier = [p for p in run.produced.get("gwpca", []) if p.name == f"gwpca_{LOCAL_TABLE}"]
    run.node.set_total(1 if earlier else 2)
    if earlier:
        local = earlier[0]
    else:
        gwpca_node = run.phase("gwpca", unit="steps")
        own = run_gwpca(run.derive(node=gwpca_node, prefix=OWN_GWPCA_PREFIX))
        run.phase_done(gwpca_node)
        outputs += own
        local = next(p for p in own if p.name.endswith(LOCAL_TABLE))
    loadings = [f"pc{j + 1}_{name}" for j in range(config.components) for name in run.columns]
    som_node = run.phase("som", unit="steps")
    outputs += run_som(
        run.derive(
            table=local,
            variables=Variables.plain(loadings),
            grid=run.grid.strided(config.subsample),
            node=som_node,
        )
    )
    run.phase_done(som_node)
    return outputs
