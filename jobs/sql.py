"""spark-submit entry for the `sql` stage; takes the same arguments as `loganomaly sql`."""

import sys

from loganomaly.cli import run_stage

if __name__ == "__main__":
    sys.exit(run_stage("sql", sys.argv[1:]))
