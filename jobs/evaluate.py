"""spark-submit entry for the `evaluate` stage; takes the same arguments as `loganomaly evaluate`."""

import sys

from loganomaly.cli import run_stage

if __name__ == "__main__":
    sys.exit(run_stage("evaluate", sys.argv[1:]))
