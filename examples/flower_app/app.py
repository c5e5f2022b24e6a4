"""A minimal Flower app (flwr 1.42, Message API or legacy) with giabench's LeakageStrategy switched on.

Client i holds ``--per-client`` digits of ``--dataset`` (mnist-sample; consecutive blocks from ``--first``) and
trains the giabench MLP (width 64) with plain torch SGD (``--epochs`` local epochs of minibatches of
``--local-batch``, 0 = the whole batch, step ``--lr``). Client ``--dp-client`` instead holds ``--dp-examples``
digits and trains with Opacus (``PrivacyEngine.make_private``: Poisson batches of expected size ``--dp-batch``, clip
``--max-grad-norm``, noise ``--noise-multiplier``, Opacus' RDP accountant kept across rounds in the node's state);
it declares what it did and its epsilon in its reply. Client ``--prune-client`` sends only the top ``1 -
--prune-fraction`` entries of each tensor of its update and declares that. The server aggregates with Flower's own
FedAvg, and every round giabench attacks each client's update with fc-invert and IG into ``--out``; ``--api legacy``
runs the same app through Flower's legacy interface (NumPyClient, ``flwr.server.strategy.FedAvg``,
LegacyLeakageStrategy). The simulation knows each client's digits (the client reports its partition id), so the
cells are scored.
Run it with Flower's simulation engine (Ray):

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
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp
from flwr.common import ndarrays_to_parameters
from flwr.server import ServerAppComponents, ServerConfig
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

from giabench import data, models
from giabench.app.integrations.flower import DECLARATION, LeakageStrategy, LegacyLeakageStrategy, legacy_metrics, named
from giabench.app.integrations.recorder import opacus_declaration


def network(dataset: str) -> torch.nn.Module:
    return models.build("mlp", {"width": 64}, data.load(dataset), "untrained", 0)


def partition(index: int, args) -> tuple[torch.Tensor, torch.Tensor]:
    """Client ``index``'s images: consecutive blocks of the dataset from ``first`` on (the DP client's block holds
    ``dp_examples``)."""
    sizes = [args.dp_examples if i == args.dp_client else args.per_client for i in range(args.clients)]
    start = args.first + sum(sizes[:index])
    imageset = data.load(args.dataset)
    if start + sizes[index] > len(imageset):
        raise ValueError(f"{args.dataset} has {len(imageset)} images; client {index} needs {start + sizes[index]}")
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


def train_client(index: int, net, sent: dict, config: dict, context: Context, args) -> dict:
    """Client ``index``'s local training from the global weights ``sent``; what it declares (empty: nothing)."""
    x, y = partition(index, args)
    torch.manual_seed(args.seed * 1_000_003 + 1000 * index + int(config.get("server-round", 0)))  # Opacus' draws
    net.load_state_dict(sent)
    if index == args.dp_client:
        return opacus_sgd(net, x, y, config, context, args)
    sgd(net, x, y, config)
    return prune(net, sent, args.prune_fraction) if index == args.prune_client else {}


def client_app(args) -> ClientApp:
    if args.api == "legacy":
        return ClientApp(client_fn=lambda context: LegacyClient(context, args).to_client())
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        index = int(context.node_config["partition-id"])
        net = network(args.dataset)
        declared = train_client(index, net, msg.content["arrays"].to_torch_state_dict(), dict(msg.content["config"]),
                                context, args)
        metrics = MetricRecord({"num-examples": len(partition(index, args)[0]), "partition-id": index})
        content = RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": metrics})
        if declared:
            content[DECLARATION] = ConfigRecord(declared)
        return Message(content=content, reply_to=msg)

    return app


class LegacyClient(NumPyClient):
    """The same client for Flower's legacy interface: parameters are the state_dict values in order, and the
    declaration travels in the fit metrics."""

    def __init__(self, context: Context, args):
        self.node_context, self.args = context, args

    def fit(self, parameters, config):
        index = int(self.node_context.node_config["partition-id"])
        net = network(self.args.dataset)
        declared = train_client(index, net, named(net, parameters), dict(config), self.node_context, self.args)
        weights = [v.detach().numpy() for v in net.state_dict().values()]
        return weights, len(partition(index, self.args)[0]), {"partition-id": index, **legacy_metrics(declared)}


def server_app(args) -> ServerApp:
    train_config = {"epochs": args.epochs, "batch-size": args.local_batch, "lr": args.lr}
    recorder = {"model": network(args.dataset), "dataset": args.dataset, "out": args.out,
                "attacks": ["fc-invert", {"name": "ig", "iterations": args.ig_iterations}],
                "truth": lambda node, server_round, metrics: partition(int(metrics["partition-id"]), args)}
    if args.api == "legacy":
        def server_fn(context: Context) -> ServerAppComponents:
            inner = LegacyFedAvg(fraction_evaluate=0.0, min_fit_clients=args.clients,
                                 min_available_clients=args.clients,
                                 on_fit_config_fn=lambda r: {**train_config, "server-round": r},
                                 initial_parameters=ndarrays_to_parameters(
                                     [v.numpy() for v in network(args.dataset).state_dict().values()]))
            return ServerAppComponents(strategy=LegacyLeakageStrategy(inner, **recorder),
                                       config=ServerConfig(num_rounds=args.rounds))

        return ServerApp(server_fn=server_fn)
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = LeakageStrategy(FedAvg(fraction_evaluate=0.0), **recorder)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(network(args.dataset).state_dict()),
                       num_rounds=args.rounds, train_config=ConfigRecord(train_config))

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/flower")
    parser.add_argument("--api", choices=("message", "legacy"), default="message",
                        help="Flower's Message API (ServerApp main, Strategy.start) or its legacy Strategy interface")
    parser.add_argument("--dataset", default="mnist-sample", help="a giabench dataset of 1 x 28 x 28 digits")
    parser.add_argument("--first", type=int, default=0, help="the dataset index of client 0's first image")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--per-client", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--local-batch", type=int, default=0)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--ig-iterations", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="the clients' randomness (Opacus' samples and noise)")
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
