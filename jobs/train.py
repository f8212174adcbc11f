"""spark-submit entry for the `train` stage; takes the same arguments as `loganomaly train`."""

import sys

from loganomaly.cli import run_stage

if __name__ == "__main__":
    sys.exit(run_stage("train", sys.argv[1:]))
