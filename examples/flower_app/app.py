"""A minimal Flower app (flwr 1.42, Message API) with giabench's LeakageStrategy switched on.

Client i holds ``--per-client`` mnist-sample digits and trains the giabench MLP (width 64) with plain torch SGD
(``--epochs`` local epochs of minibatches of ``--local-batch``, 0 = the whole batch, step ``--lr``). Client
``--dp-client`` instead holds ``--dp-examples`` digits and trains with Opacus (``PrivacyEngine.make_private``:
Poisson batches of expected size ``--dp-batch``, clip ``--max-grad-norm``, noise ``--noise-multiplier``, Opacus' RDP
accountant kept across rounds in the node's state); it declares what it did and its epsilon in its reply.
Client ``--prune-client`` sends only the top ``1 - --prune-fraction`` entries of each tensor of its update and
declares that. The server aggregates with Flower's own FedAvg, and every round giabench attacks each client's update
with fc-invert and IG into ``--out``. The simulation knows each client's digits (the client reports its partition
id), so the cells are scored. Run it with Flower's simulation engine (Ray):

    .venv/bin/python examples/flower_app/app.py --out runs/flower
    .venv/bin/giabench leaderboard runs/flower

To attach giabench to an existing app, wrap its strategy in the ServerApp's main:
``strategy = LeakageStrategy(FedAvg(...), model=..., dataset=..., attacks=["fc-invert"], out=...)``, and put
``epochs``, ``batch-size`` and ``lr`` into the train config the server sends (the FedAvg simulation reads them).
"""

from __future__ import annotations

import argparse
import json
import math

import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

from giabench import data, models
from giabench.integrations.flower import DECLARATION, LeakageStrategy, opacus_declaration

DATASET = "mnist-sample"


def network() -> torch.nn.Module:
    return models.build("mlp", {"width": 64}, data.load(DATASET), "untrained", 0)


def partition(index: int, args) -> tuple[torch.Tensor, torch.Tensor]:
    """Client ``index``'s digits: consecutive blocks of mnist-sample (the DP client's block has ``dp_examples``)."""
    sizes = [args.dp_examples if i == args.dp_client else args.per_client for i in range(args.clients)]
    start = sum(sizes[:index])
    imageset = data.load(DATASET)
    return imageset.images[start:start + sizes[index]], imageset.labels[start:start + sizes[index]]


def sgd(net, x, y, config) -> None:
    optimizer = torch.optim.SGD(net.parameters(), lr=float(config["lr"]))
    step = int(config["batch-size"]) or len(x)
    for _ in range(int(config["epochs"])):
        for start in range(0, len(x), step):
            optimizer.zero_grad()
            F.cross_entropy(net(x[start:start + step]), y[start:start + step]).backward()
            optimizer.step()


def opacus_sgd(net, x, y, config, context: Context, args) -> dict:
    """Opacus' DP-SGD; its accountant's history lives in the node's state, so epsilon composes over the rounds."""
    from opacus import PrivacyEngine

    engine = PrivacyEngine(accountant="rdp")
    kept = context.state.config_records.get("opacus")
    if kept is not None:
        engine.accountant.history = list(zip(kept["z"], kept["q"], kept["steps"], strict=True))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=args.dp_batch)
    optimizer = torch.optim.SGD(net.parameters(), lr=float(config["lr"]))
    module, optimizer, loader = engine.make_private(
        module=net, optimizer=optimizer, data_loader=loader, noise_multiplier=args.noise_multiplier,
        max_grad_norm=args.max_grad_norm, poisson_sampling=True)
    epochs = int(config["epochs"])
    for _ in range(epochs):
        for xb, yb in loader:
            optimizer.zero_grad()
            F.cross_entropy(module(xb), yb).backward()
            optimizer.step()
    z, q, steps = zip(*engine.accountant.history, strict=True)
    context.state.config_records["opacus"] = ConfigRecord({"z": list(z), "q": list(q), "steps": list(steps)})
    return {**opacus_declaration(optimizer, loader, epochs, args.dp_delta),
            "dp-epsilon": engine.get_epsilon(args.dp_delta), "dp-delta": args.dp_delta}


def prune(net, sent: dict, fraction: float) -> dict:
    """Send w_0 - top_k(w_0 - w_K) per tensor, and declare it."""
    state = net.state_dict()
    for name, weight in state.items():
        update = sent[name] - weight
        keep = torch.zeros(update.numel(), dtype=torch.bool)
        keep[torch.topk(update.abs().flatten(), math.ceil((1 - fraction) * update.numel())).indices] = True
        state[name] = sent[name] - update * keep.view_as(update)
    net.load_state_dict(state)
    return {"giabench-defense": json.dumps({"name": "prune", "fraction": fraction})}


def client_app(args) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        index = int(context.node_config["partition-id"])
        x, y = partition(index, args)
        config = msg.content["config"]
        torch.manual_seed(1000 * index + int(config.get("server-round", 0)))  # Opacus' Poisson sample and noise
        net = network()
        sent = msg.content["arrays"].to_torch_state_dict()
        net.load_state_dict(sent)
        declared = {}
        if index == args.dp_client:
            declared = opacus_sgd(net, x, y, config, context, args)
        else:
            sgd(net, x, y, config)
            if index == args.prune_client:
                declared = prune(net, sent, args.prune_fraction)
        content = RecordDict({"arrays": ArrayRecord(net.state_dict()),
                              "metrics": MetricRecord({"num-examples": len(x), "partition-id": index})})
        if declared:
            content[DECLARATION] = ConfigRecord(declared)
        return Message(content=content, reply_to=msg)

    return app


def server_app(args) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        def truth(node: int, server_round: int, metrics: dict):
            return partition(int(metrics["partition-id"]), args)

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
    parser.add_argument("--dp-client", type=int, default=2, help="the client that trains with Opacus (-1: none)")
    parser.add_argument("--dp-examples", type=int, default=4)
    parser.add_argument("--dp-batch", type=int, default=2)
    parser.add_argument("--noise-multiplier", type=float, default=1.0)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--dp-delta", type=float, default=1e-5)
    parser.add_argument("--prune-client", type=int, default=1, help="the client that prunes its update (-1: none)")
    parser.add_argument("--prune-fraction", type=float, default=0.9)
    args = parser.parse_args()
    run_simulation(server_app=server_app(args), client_app=client_app(args), num_supernodes=args.clients,
                   backend_config={"client_resources": {"num_cpus": 1}})


if __name__ == "__main__":
    main()
