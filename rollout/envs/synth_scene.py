"""What the synth templates draw from and act on: the value pools, the procedural initial state of each
API class, and the scene that executes and records a template's calls (synth_templates.py holds the
templates).
"""

from __future__ import annotations

import copy
import random
from functools import cache
from typing import Any

from rollout.envs.base import api_class, load_instances, public_methods
from rollout.types import ToolCall

WORDS = ("apple", "budget", "meeting", "river", "cloud", "garden", "invoice", "paper", "signal", "window",
         "orange", "rocket", "summer", "forest", "engine", "planet", "silver", "coffee", "market", "winter")
STEMS = ("notes", "report", "todo", "draft", "summary", "budget", "ideas", "log", "data", "readme", "plan",
         "results", "config", "letter", "list")
FILE_NAMES = [stem + ext for stem in STEMS for ext in (".txt", ".md", ".csv", ".log")]
DIRS = ("docs", "archive", "projects", "photos", "reports", "backup", "music", "drafts", "work", "school",
        "tmp", "shared", "media", "old")
ROOTS = ("alex", "workspace", "home", "project", "sam", "data")
NAMES = ("Alice", "Bob", "Catherine", "Daniel", "Eve", "Frank", "Grace", "Henry", "Ivy", "Jack", "Karen",
         "Leo", "Mia", "Noah", "Olivia", "Paul")
MESSAGES = ("Could you upload the file?", "Lunch at noon tomorrow?", "The meeting moved to Friday.",
            "Please review the draft.", "Happy birthday!", "Call me when you land.", "Invoice is ready.")
HANDLES = ("john", "mia_k", "techguru", "dan_writes", "lucy88", "omar", "zoe_codes", "kenji")
TOPICS = ("coffee", "marathon", "python", "garden", "jazz", "galaxy", "pizza", "robots", "sunset", "chess",
          "hiking", "cinema")
TWEETS = ("Loving the new {} update", "Anyone else into {} lately?", "Spent the whole day on {}",
          "Hot take: {} is underrated")
TAGS = ("#news", "#fun", "#tech", "#travel", "#food", "#life")
COMPANIES = ("Apple", "Google", "Tesla", "Microsoft", "Nvidia", "Zeta Corp", "Alpha Tech", "Omega Industries",
             "Quasar Ltd.", "Neptune Systems", "Synex Solutions", "Amazon")
CITIES = ("Rivermist", "Stonebrook", "Maplecrest", "Silverpine", "Shadowridge", "Sunset Valley", "Oakendale",
          "Willowbend", "Crescent Hollow", "Autumnville", "San Francisco")
DOORS = ("driver", "passenger", "rear_left", "rear_right")
CURRENCIES = ("EUR", "JPY", "GBP", "CAD", "AUD", "INR", "MXN")
TICKETS = ("Printer not working", "VPN access", "Laptop battery", "Password reset", "Email sync issue",
           "Monitor flicker", "Software license", "Broken chair")


class Skip(Exception):
    """The template does not fit the current state (raised before it has made any call)."""


class Scene:
    """Live API instances of a task being generated; calling the scene executes and records one call."""

    def __init__(self, configs: dict[str, dict]):
        self.apis = load_instances(list(configs), configs)
        self._methods = public_methods(self.apis)
        self.calls: list[ToolCall] = []

    def __call__(self, function: str, /, **arguments: Any) -> Any:
        result = self._methods[function](**copy.deepcopy(arguments))
        if failed(result):
            raise RuntimeError(f"synth generated a failing call {function}({arguments}): {result}")
        self.calls.append(ToolCall(function, arguments))
        return result


def failed(result: Any) -> bool:
    """Whether an API result reports an error (the classes signal errors in several shapes)."""
    if isinstance(result, dict):
        return "error" in result
    if isinstance(result, list):
        return any(failed(item) for item in result)
    return isinstance(result, str) and result.lower().startswith("error")


def pick(rng: random.Random, options: list) -> Any:
    if not options:
        raise Skip
    return rng.choice(options)


def say(rng: random.Random, *phrasings: str, **values: Any) -> str:
    return rng.choice(phrasings).format(**values)


# ---- initial states ---------------------------------------------------------------------------------


def fs_scenario(rng: random.Random) -> dict:
    files, dirs = iter(rng.sample(FILE_NAMES, 20)), iter(rng.sample(DIRS, 6))  # names unique in the tree

    def folder(contents: dict) -> dict:
        return {"type": "directory", "contents": contents}

    def text() -> str:
        return "\n".join(" ".join(rng.sample(WORDS, rng.randint(3, 5))) for _ in range(rng.randint(1, 5)))

    def some_files(k: int) -> dict:
        return {next(files): {"type": "file", "content": text()} for _ in range(k)}

    root = some_files(rng.randint(1, 2))
    for _ in range(rng.randint(2, 3)):
        inner = some_files(rng.randint(1, 3))
        if rng.random() < 0.3:
            inner[next(dirs)] = folder(some_files(rng.randint(1, 2)))
        root[next(dirs)] = folder(inner)
    return {"root": {rng.choice(ROOTS): folder(root)}}


def message_scenario(rng: random.Random) -> dict:
    user_map = {name: f"USR{i + 1:03d}" for i, name in enumerate(rng.sample(NAMES, rng.randint(3, 6)))}
    ids = list(user_map.values())
    inbox = [{rng.choice(ids): rng.choice(MESSAGES)} for _ in range(rng.randint(1, 4))]
    return {"random_seed": rng.randint(1, 10**6), "user_count": len(ids), "user_map": user_map,
            "inbox": inbox, "message_count": len(inbox), "current_user": rng.choice([None, *ids])}


def twitter_scenario(rng: random.Random) -> dict:
    me, *others = rng.sample(HANDLES, 5)
    topics = rng.sample(TOPICS, rng.randint(2, 4))
    tweets = {str(i): {"id": i, "username": rng.choice((me, *others)), "mentions": [],
                       "content": rng.choice(TWEETS).format(t), "tags": rng.sample(TAGS, rng.randint(0, 2))}
              for i, t in enumerate(topics)}
    return {"username": me, "password": f"{rng.choice(WORDS)}{rng.randint(10, 99)}",
            "authenticated": rng.random() < 0.5, "tweets": tweets, "comments": {}, "retweets": {},
            "following_list": rng.sample(others, rng.randint(1, 3)), "tweet_counter": len(topics)}


@cache
def stock_symbol(company: str) -> str:
    return api_class("TradingBot")().get_symbol_by_name(company)["symbol"]  # the class's own name map


def trading_scenario(rng: random.Random) -> dict:
    stocks = {}
    for company in rng.sample(COMPANIES, rng.randint(4, 7)):
        price = round(rng.uniform(15, 900), 2)
        stocks[stock_symbol(company)] = {
            "price": price, "percent_change": round(rng.uniform(-3, 3), 2),
            "volume": round(rng.uniform(0.5, 4), 3), "MA(5)": round(price * rng.uniform(0.97, 1.03), 2),
            "MA(20)": round(price * rng.uniform(0.95, 1.05), 2)}
    ids = rng.sample(range(10000, 100000), rng.randint(1, 3))
    orders = {str(i): {"id": i, "order_type": rng.choice(("Buy", "Sell")), "symbol": rng.choice(list(stocks)),
                       "price": round(rng.uniform(15, 900), 2), "amount": rng.randint(1, 50),
                       "status": rng.choice(("Open", "Pending", "Completed"))} for i in ids}
    account = {"account_id": rng.randint(10000, 99999), "balance": round(rng.uniform(2000, 40000), 2),
               "binding_card": rng.randint(10**15, 10**16 - 1)}
    # logged in and market open: trading_login accepts any credentials, so a login call would be a no-op
    return {"orders": orders, "account_info": account, "authenticated": True, "market_status": "Open",
            "order_counter": max(ids) + 1, "stocks": stocks, "watch_list": rng.sample(list(stocks), 2),
            "transaction_history": [], "random_seed": rng.randint(1, 10**6)}


def vehicle_scenario(rng: random.Random) -> dict:
    return {"random_seed": rng.randint(1, 10**6), "fuelLevel": rng.randint(0, 60) / 2,
            "engineState": "stopped", "batteryVoltage": round(rng.uniform(11.5, 13.5), 1),
            "doorStatus": {door: rng.choice(("locked", "unlocked")) for door in DOORS}}


def ticket_scenario(rng: random.Random) -> dict:
    me, other = rng.sample(HANDLES, 2)  # "me" is logged in and made most tickets
    ids = sorted(rng.sample(range(1, 100), rng.randint(2, 4)))
    queue = [{"id": i, "title": title, "description": rng.choice(MESSAGES), "priority": rng.randint(1, 5),
              "status": rng.choice(("Open", "In Progress", "Closed")),
              "created_by": rng.choice((me, me, other))}
             for i, title in zip(ids, rng.sample(TICKETS, len(ids)))]
    # logged in: ticket_login accepts any password, so its password argument could never matter
    return {"ticket_queue": queue, "ticket_counter": ids[-1] + 1, "current_user": me}


SCENARIOS = {"GorillaFileSystem": fs_scenario, "MessageAPI": message_scenario, "TwitterAPI": twitter_scenario,
             "TradingBot": trading_scenario, "VehicleControlAPI": vehicle_scenario,
             "TicketAPI": ticket_scenario, "TravelAPI": lambda rng: {}}  # exchange rates need no state

