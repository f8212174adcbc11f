"""loganomaly: learn what normal log activity looks like and flag what does not fit.

The package is organised one module per concept (config, spark session, tables, parsing,
features, models, training, scoring, cli). Jobs under ``jobs/`` and the ``loganomaly``
console script are thin shims over the ``run()`` functions of the stage modules.
"""

__version__ = "0.1.0"
