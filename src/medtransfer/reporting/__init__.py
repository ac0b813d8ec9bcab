"""Reports, the top layer: the experiment report (`reporting.experiment`), the shift report
(`reporting.shift`) and the demo's tables, all built from the blocks of `reporting.blocks`.

This layer imports downward (experiment, strategies, evaluation, data); nothing below imports it.
The report modules are not imported here, so `import medtransfer.reporting` stays light.
"""

from .blocks import (Block, Bullets, Heading, Paragraph, Plot, Pre, Table, metrics_table, png, to_console,
                     to_html, to_markdown)

__all__ = ["Block", "Bullets", "Heading", "Paragraph", "Plot", "Pre", "Table", "metrics_table", "png",
           "to_console", "to_html", "to_markdown"]
