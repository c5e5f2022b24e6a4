"""A minimal Flower app (flwr 1.42, Message API) with giabench's LeakageStrategy switched on.

Each of ``--clients`` clients holds ``--per-client`` mnist-sample digits and trains the giabench MLP (width 64) with
plain torch SGD (``--epochs`` local epochs of minibatches of ``--local-batch``, 0 = the whole batch, step ``--lr``);
the server aggregates with Flower's own FedAvg, and every round giabench attacks each client's update with fc-invert
and IG into ``--out``. The simulation knows each client's digits (the client reports its partition id), so the cells
are scored. Run it with Flower's simulation engine (Ray):

    .venv/bin/python examples/flower_app/app.py --out runs/flower
    .venv/bin/giabench leaderboard runs/flower

To attach giabench to an existing app, wrap its strategy in the ServerApp's main:
``strategy = LeakageStrategy(FedAvg(...), model=..., dataset=..., attacks=["fc-invert"], out=...)``, and put
``epochs``, ``batch-size`` and ``lr`` into the train config the server sends (the FedAvg simulation reads them).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

from giabench import data, models
from giabench.integrations.flower import LeakageStrategy

DATASET = "mnist-sample"


def network() -> torch.nn.Module:
    return models.build("mlp", {"width": 64}, data.load(DATASET), "untrained", 0)


def partition(index: int, per_client: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Client ``index``'s digits: a consecutive block of mnist-sample."""
    imageset = data.load(DATASET)
    rows = slice(index * per_client, (index + 1) * per_client)
    return imageset.images[rows], imageset.labels[rows]


def client_app(per_client: int) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        index = int(context.node_config["partition-id"])
        x, y = partition(index, per_client)
        config = msg.content["config"]
        net = network()
        net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        optimizer = torch.optim.SGD(net.parameters(), lr=float(config["lr"]))
        step = int(config["batch-size"]) or len(x)
        for _ in range(int(config["epochs"])):
            for start in range(0, len(x), step):
                optimizer.zero_grad()
                F.cross_entropy(net(x[start:start + step]), y[start:start + step]).backward()
                optimizer.step()
        metrics = MetricRecord({"num-examples": len(x), "partition-id": index})
        return Message(content=RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": metrics}),
                       reply_to=msg)

    return app


def server_app(args) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        def truth(node: int, server_round: int, metrics: dict):
            return partition(int(metrics["partition-id"]), args.per_client)

        strategy = LeakageStrategy(FedAvg(fraction_evaluate=0.0), model=network(), dataset=DATASET,
                                   attacks=["fc-invert", {"name": "ig", "iterations": args.ig_iterations}],
                                   out=args.out, truth=truth)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(network().state_dict()), num_rounds=args.rounds,
                       train_config=ConfigRecord({"epochs": args.epochs, "batch-size": args.local_batch,
                                                  "lr": args.lr}))

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/flower")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--per-client", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--local-batch", type=int, default=0)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--ig-iterations", type=int, default=100)
    args = parser.parse_args()
    run_simulation(server_app=server_app(args), client_app=client_app(args.per_client), num_supernodes=args.clients,
                   backend_config={"client_resources": {"num_cpus": 1}})


if __name__ == "__main__":
    main()
