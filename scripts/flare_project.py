"""Write the NVIDIA FLARE project of a production SplitFT deployment.

    python scripts/flare_project.py --server fl.example.com --sites 4 > project.yml
    nvflare provision -p project.yml        # startup kits under workspace/splitft/prod_00/

The server runs on ``--server`` (a name every site can resolve); clients are sites ``site-1``
.. ``site-N``, which SplitFT maps to clients 0 .. N-1. See README, "Multi-machine".
"""

from __future__ import annotations

import argparse
import sys

from splitft.runtime.flare_job import project_yml


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="server host name (FQDN the sites can reach)")
    parser.add_argument("--sites", type=int, required=True, help="number of client sites")
    parser.add_argument("--name", default="splitft", help="FLARE project name")
    parser.add_argument("--admin", default="admin@nvidia.com", help="admin user (submits the job)")
    parser.add_argument("--out", default="-", help="file to write ('-' = stdout)")
    ns = parser.parse_args(argv)
    text = project_yml(ns.server, ns.sites, ns.name, ns.admin)
    if ns.out == "-":
        sys.stdout.write(text)
    else:
        with open(ns.out, "w") as handle:
            handle.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
