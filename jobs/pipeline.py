"""spark-submit entry for the `pipeline` stage; takes the same arguments as `loganomaly pipeline`."""

import sys

from loganomaly.cli import run_stage

if __name__ == "__main__":
    sys.exit(run_stage("pipeline", sys.argv[1:]))
