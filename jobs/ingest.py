"""spark-submit entry for the `ingest` stage; takes the same arguments as `loganomaly ingest`."""

import sys

from loganomaly.cli import run_stage

if __name__ == "__main__":
    sys.exit(run_stage("ingest", sys.argv[1:]))
