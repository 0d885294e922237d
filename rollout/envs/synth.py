"""Procedurally generated multi-turn tool tasks over the BFCL API classes (the "synth" environment).

Small enough for a tiny model trained from scratch, unlimited, and with clean OOD splits. A task draws a
fresh initial state for its API classes from its seed, then 1-3 user turns, each made by a template: a
function ``(rng, scene) -> user text`` (or None when the state does not fit it) that picks its values from
the live state and issues its calls through the scene. The scene executes every call at once on real
instances of the BFCL classes, so later calls can use earlier results, later turns see the state the
earlier turns left, and a call that errors is a generator bug, never ground truth.

Splits: ``train`` and ``test`` share the templates and are told apart by a hash of the task's content
(turns + ground truth), so no test task can equal a train task at any index; ``ood_content`` uses only
held-out templates, including every template of the held-out classes (TicketAPI, TravelAPI).
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from dataclasses import dataclass
from itertools import count
from typing import Any, Callable

from bfcl_eval.constants.executable_backend_config import STATELESS_CLASSES
from bfcl_eval.eval_checker.multi_turn_eval.func_source_code.gorilla_file_system import Directory, File

from rollout.envs.base import Task, api_class, public_methods
from rollout.envs.bfcl import class_tools
from rollout.types import ToolCall

SPLITS = ("train", "test", "ood_content")
SPLIT_SIZES = {"train": 1000, "test": 200, "ood_content": 200}
HELD_OUT_CLASSES = ("TicketAPI", "TravelAPI")
TEST_SHARE = 5  # one content hash bucket in TEST_SHARE belongs to test, the others to train

WORDS = ("apple", "budget", "meeting", "river", "cloud", "garden", "invoice", "paper", "signal", "window",
         "orange", "rocket", "summer", "forest", "engine", "planet", "silver", "coffee", "market", "winter")
STEMS = ("notes", "report", "todo", "draft", "summary", "budget", "ideas", "log", "data", "readme", "plan",
         "results", "config", "letter", "list")
EXTS = (".txt", ".md", ".csv", ".log")
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
UNITS = (("km", "miles"), ("miles", "km"), ("kg", "lb"), ("lb", "kg"), ("m", "ft"), ("ft", "m"),
         ("cm", "in"), ("in", "cm"), ("celsius", "fahrenheit"), ("fahrenheit", "celsius"))
CURRENCIES = ("EUR", "JPY", "GBP", "CAD", "AUD", "INR", "MXN")
TICKET_TITLES = ("Printer not working", "VPN access", "Laptop battery", "Password reset", "Email sync issue",
                 "Monitor flicker", "Software license", "Broken chair")
RESOLUTIONS = ("Replaced the cable", "Reset the account", "Installed the update", "Ordered a new one")


class Scene:
    """Live API instances of a task being generated; calling the scene executes and records one call."""

    def __init__(self, configs: dict[str, dict]):
        self.apis = {}
        for name, config in configs.items():
            self.apis[name] = api_class(name)()
            if name not in STATELESS_CLASSES:
                self.apis[name]._load_scenario(copy.deepcopy(config))
        self._methods = public_methods(self.apis)
        self.calls: list[ToolCall] = []

    def __call__(self, name: str, **arguments: Any) -> Any:
        result = self._methods[name](**copy.deepcopy(arguments))
        if failed(result):
            raise RuntimeError(f"synth generated a failing call {name}({arguments}): {result}")
        self.calls.append(ToolCall(name, arguments))
        return result


def failed(result: Any) -> bool:
    """Whether an API result reports an error (the classes signal errors in several shapes)."""
    if isinstance(result, dict):
        return "error" in result
    if isinstance(result, list):
        return any(failed(item) for item in result)
    return isinstance(result, str) and result.lower().startswith("error")


@dataclass(frozen=True)
class Template:
    name: str
    cls: str
    held_out: bool
    make: Callable[[random.Random, Scene], str | None]


TEMPLATES: dict[str, Template] = {}


def template(cls: str, held_out: bool = False):
    def register(make):
        TEMPLATES[make.__name__] = Template(make.__name__, cls, held_out or cls in HELD_OUT_CLASSES, make)
        return make

    return register


def say(rng: random.Random, *phrasings: str, **values: Any) -> str:
    return rng.choice(phrasings).format(**values)


# ---- initial states ---------------------------------------------------------------------------------


def _lines(rng: random.Random) -> str:
    return "\n".join(" ".join(rng.sample(WORDS, rng.randint(3, 5))) for _ in range(rng.randint(1, 5)))


def fs_scenario(rng: random.Random) -> dict:
    files = iter(rng.sample([s + e for s in STEMS for e in EXTS], 20))  # names unique in the whole tree
    dirs = iter(rng.sample(DIRS, 6))

    def folder(contents: dict) -> dict:
        return {"type": "directory", "contents": contents}

    def some_files(k: int) -> dict:
        return {next(files): {"type": "file", "content": _lines(rng)} for _ in range(k)}

    root = some_files(rng.randint(1, 2))
    for _ in range(rng.randint(2, 3)):
        inner = some_files(rng.randint(1, 3))
        if rng.random() < 0.3:
            inner[next(dirs)] = folder(some_files(rng.randint(1, 2)))
        root[next(dirs)] = folder(inner)
    return {"root": {rng.choice(ROOTS): folder(root)}}


def message_scenario(rng: random.Random) -> dict:
    names = rng.sample(NAMES, rng.randint(3, 6))
    user_map = {name: f"USR{i + 1:03d}" for i, name in enumerate(names)}
    ids = list(user_map.values())
    inbox = [{rng.choice(ids): rng.choice(MESSAGES)} for _ in range(rng.randint(1, 4))]
    return {"random_seed": rng.randint(1, 10**6), "user_count": len(names), "user_map": user_map,
            "inbox": inbox, "message_count": len(inbox), "current_user": rng.choice([None, *ids])}


def twitter_scenario(rng: random.Random) -> dict:
    me, *others = rng.sample(HANDLES, 5)
    topics = rng.sample(TOPICS, rng.randint(2, 4))
    tweets = {str(i): {"id": i, "username": rng.choice((me, *others)), "content": rng.choice(TWEETS).format(t),
                       "tags": rng.sample(TAGS, rng.randint(0, 2)), "mentions": []} for i, t in enumerate(topics)}
    return {"username": me, "password": f"{rng.choice(WORDS)}{rng.randint(10, 99)}",
            "authenticated": rng.random() < 0.5, "tweets": tweets, "comments": {}, "retweets": {},
            "following_list": rng.sample(others, rng.randint(1, 3)), "tweet_counter": len(topics)}


def _symbol(company: str) -> str:
    return api_class("TradingBot")().get_symbol_by_name(company)["symbol"]  # the class's own name map


def trading_scenario(rng: random.Random) -> dict:
    stocks = {}
    for company in rng.sample(COMPANIES, rng.randint(4, 7)):
        price = round(rng.uniform(15, 900), 2)
        stocks[_symbol(company)] = {
            "price": price, "percent_change": round(rng.uniform(-3, 3), 2), "volume": round(rng.uniform(0.5, 4), 3),
            "MA(5)": round(price * rng.uniform(0.97, 1.03), 2), "MA(20)": round(price * rng.uniform(0.95, 1.05), 2)}
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
            "batteryVoltage": round(rng.uniform(11.5, 13.5), 1), "engineState": "stopped",
            "doorStatus": {door: rng.choice(("locked", "unlocked")) for door in DOORS},
            "acTemperature": float(rng.randint(16, 28)), "fanSpeed": rng.randrange(0, 101, 10),
            "acMode": rng.choice(("auto", "cool", "heat")), "humidityLevel": float(rng.randint(30, 70)),
            "headLightStatus": rng.choice(("on", "off")), "parkingBrakeStatus": rng.choice(("engaged", "released"))}


def ticket_scenario(rng: random.Random) -> dict:
    me, other = rng.sample(HANDLES, 2)
    ids = sorted(rng.sample(range(1, 100), rng.randint(2, 4)))
    queue = [{"id": i, "title": title, "description": rng.choice(MESSAGES), "priority": rng.randint(1, 5),
              "status": rng.choice(("Open", "In Progress", "Closed")),
              "created_by": me if rng.random() < 0.8 else other}
             for i, title in zip(ids, rng.sample(TICKET_TITLES, len(ids)))]
    # logged in: ticket_login accepts any password, so its password argument could never matter
    return {"ticket_queue": queue, "ticket_counter": ids[-1] + 1, "current_user": me}


SCENARIOS = {"GorillaFileSystem": fs_scenario, "MessageAPI": message_scenario, "TwitterAPI": twitter_scenario,
             "TradingBot": trading_scenario, "VehicleControlAPI": vehicle_scenario, "TicketAPI": ticket_scenario,
             "TravelAPI": lambda rng: {}}  # exchange rates need no state: the class defaults suffice


# ---- GorillaFileSystem ----------------------------------------------------------------------------


def _tree_names(directory: Directory) -> set[str]:
    names = set(directory.contents)
    for item in directory.contents.values():
        if isinstance(item, Directory):
            names |= _tree_names(item)
    return names


def _files(directory: Directory, min_lines: int = 0) -> list[str]:
    return [n for n, item in directory.contents.items()
            if isinstance(item, File) and len(item.content.splitlines()) >= min_lines]


def _folder(rng: random.Random, scene: Scene, min_lines: int | None = None) -> tuple[Directory, list[str]] | None:
    """A folder the user can name from where the shell stands (here, a child, or the parent) with the cd
    arguments that reach it; with ``min_lines``, only folders holding a file at least that long."""
    here = scene.apis["GorillaFileSystem"]._current_dir
    options = [(here, [])] + [(d, [n]) for n, d in here.contents.items() if isinstance(d, Directory)]
    if here.parent is not None:
        options.append((here.parent, [".."]))
    if min_lines is not None:
        options = [(d, path) for d, path in options if _files(d, min_lines)]
    return rng.choice(options) if options else None


def _new_name(rng: random.Random, scene: Scene, pool: list[str]) -> str:
    taken = _tree_names(scene.apis["GorillaFileSystem"].root)
    return rng.choice([name for name in pool if name not in taken])


def _file_task(rng: random.Random, scene: Scene, min_lines: int = 1) -> tuple[Directory, str] | None:
    """Walk to a folder with a file (recording the cd calls); returns the folder and a file in it."""
    picked = _folder(rng, scene, min_lines)
    if picked is None:
        return None
    folder, path = picked
    for step in path:
        scene("cd", folder=step)
    return folder, rng.choice(_files(folder, min_lines))


@template("GorillaFileSystem")
def fs_read(rng, scene):
    if not (picked := _file_task(rng, scene)):
        return None
    folder, name = picked
    scene("cat", file_name=name)
    return say(rng, "Show me {f} in the {d} folder.", "What does {f} in {d} say?", "Open {d}/{f} and print it.",
               f=name, d=folder.name)


@template("GorillaFileSystem")
def fs_note(rng, scene):
    folder, path = _folder(rng, scene)
    name, text = _new_name(rng, scene, [s + ".txt" for s in STEMS]), " ".join(rng.sample(WORDS, 3))
    for step in path:
        scene("cd", folder=step)
    scene("touch", file_name=name)
    scene("echo", content=text, file_name=name)
    return say(rng, "In {d}, create {f} containing '{t}'.", "Make a file {f} in the {d} folder and write '{t}' in it.",
               d=folder.name, f=name, t=text)


@template("GorillaFileSystem")
def fs_mkdir_move(rng, scene):
    if not (picked := _file_task(rng, scene)):
        return None
    folder, name = picked
    new = _new_name(rng, scene, list(DIRS))
    scene("mkdir", dir_name=new)
    scene("mv", source=name, destination=new)
    return say(rng, "Create a folder {n} inside {d} and move {f} into it.",
               "Put {f} from {d} into a new folder called {n} next to it.", n=new, d=folder.name, f=name)


@template("GorillaFileSystem")
def fs_count(rng, scene):
    if not (picked := _file_task(rng, scene)):
        return None
    folder, name = picked
    mode, unit = rng.choice((("l", "lines"), ("w", "words"), ("c", "characters")))
    scene("wc", file_name=name, mode=mode)
    return say(rng, "How many {u} are in {f} in {d}?", "Count the {u} of {d}/{f}.", u=unit, f=name, d=folder.name)


@template("GorillaFileSystem")
def fs_grep(rng, scene):
    if not (picked := _file_task(rng, scene)):
        return None
    folder, name = picked
    word = rng.choice(folder.contents[name].content.split())
    scene("grep", file_name=name, pattern=word)
    return say(rng, "Which lines of {f} in {d} mention '{w}'?", "Search {d}/{f} for '{w}'.",
               f=name, d=folder.name, w=word)


@template("GorillaFileSystem")
def fs_tail(rng, scene):
    if not (picked := _file_task(rng, scene, min_lines=2)):
        return None
    folder, name = picked
    # fewer lines than the file has, so that one line more or less is a different answer
    lines = rng.randint(1, len(folder.contents[name].content.splitlines()) - 1)
    scene("tail", file_name=name, lines=lines)
    return say(rng, "Show the last {k} lines of {f} in {d}.", "What are the final {k} lines of {d}/{f}?",
               k=lines, f=name, d=folder.name)


@template("GorillaFileSystem", held_out=True)
def fs_copy_sort(rng, scene):
    if not (picked := _file_task(rng, scene)):
        return None
    folder, name = picked
    new = _new_name(rng, scene, [s + e for s in STEMS for e in EXTS])
    scene("cp", source=name, destination=new)
    scene("sort", file_name=new)
    return say(rng, "Copy {f} in {d} to {n}, then show the copy sorted.", "Duplicate {d}/{f} as {n} and sort {n}.",
               f=name, d=folder.name, n=new)


# ---- MathAPI ------------------------------------------------------------------------------------------


@template("MathAPI")
def math_stats(rng, scene):
    numbers = rng.sample(range(1, 100), rng.randint(3, 6))
    function, label = rng.choice((("mean", "average"), ("max_value", "largest value"), ("sum_values", "sum"),
                                  ("min_value", "smallest value"), ("standard_deviation", "standard deviation")))
    scene(function, numbers=numbers)
    return say(rng, "What is the {l} of {n}?", "Give me the {l} of these numbers: {n}.",
               l=label, n=", ".join(map(str, numbers)))


@template("MathAPI")
def math_chain(rng, scene):
    a, b, c = rng.randint(2, 500), rng.randint(2, 500), rng.randint(2, 20)
    first, second = rng.choice(("add", "subtract")), rng.choice(("multiply", "divide"))
    scene(second, a=scene(first, a=a, b=b)["result"], b=c)
    verbs = {"add": "Add {a} and {b}", "subtract": "Subtract {b} from {a}", "multiply": "multiply it by {c}",
             "divide": "divide it by {c}"}
    return (verbs[first] + ", then " + verbs[second] + ".").format(a=a, b=b, c=c)


@template("MathAPI")
def math_percent(rng, scene):
    places = rng.randint(1, 2)
    while True:  # a percentage with more digits than asked for, so that the rounding matters
        whole = rng.randint(20, 600)
        part = rng.randint(1, whole - 1)
        if round(part / whole * 100, places) != round(part / whole * 100, places + 1):
            break
    percent = scene("percentage", part=part, whole=whole)["result"]
    scene("round_number", number=percent, decimal_places=places)
    return say(rng, "What percent of {w} is {p}? Round it to {k} decimal places.",
               "Express {p} out of {w} as a percentage with {k} decimals.", w=whole, p=part, k=places)


@template("MathAPI")
def math_convert(rng, scene):
    (unit_in, unit_out), value = rng.choice(UNITS), rng.randint(1, 500)
    scene("imperial_si_conversion", value=value, unit_in=unit_in, unit_out=unit_out)
    return say(rng, "Convert {v} {a} to {b}.", "How much is {v} {a} in {b}?", v=value, a=unit_in, b=unit_out)


# ---- MessageAPI ---------------------------------------------------------------------------------------


def _message_login(rng: random.Random, scene: Scene) -> str:
    api = scene.apis["MessageAPI"]
    if api.current_user:
        return ""
    me = rng.choice(sorted(api.user_map.values()))
    scene("message_login", user_id=me)
    return say(rng, "I'm user {u}. ", "Log me in as {u}. ", u=me)


@template("MessageAPI")
def msg_send(rng, scene):
    login = _message_login(rng, scene)
    api = scene.apis["MessageAPI"]
    name = rng.choice([n for n, uid in api.user_map.items() if uid != api.current_user])
    text = rng.choice(MESSAGES)
    scene("send_message", receiver_id=scene("get_user_id", user=name)["user_id"], message=text)
    return login + say(rng, "Send '{m}' to {n}.", "Message {n}: '{m}'", m=text, n=name)


@template("MessageAPI")
def msg_add_contact(rng, scene):
    api = scene.apis["MessageAPI"]
    name, text = rng.choice([n for n in NAMES if n not in api.user_map]), rng.choice(MESSAGES)
    login = _message_login(rng, scene)
    scene("send_message", receiver_id=scene("add_contact", user_name=name)["user_id"], message=text)
    return login + say(rng, "Add {n} to my contacts and send them '{m}'.", "Save {n} as a contact, then message "
                       "them '{m}'", n=name, m=text)


@template("MessageAPI")
def msg_search(rng, scene):
    api = scene.apis["MessageAPI"]
    words = sorted({w.strip("?!.").lower() for m in api.inbox for text in m.values() for w in text.split()})
    if not (words := [w for w in words if len(w) >= 4]):
        return None
    login, word = _message_login(rng, scene), rng.choice(words)
    scene("search_messages", keyword=word)
    return login + say(rng, "Find my messages that mention '{w}'.", "Search the messages for '{w}'.", w=word)


@template("MessageAPI", held_out=True)
def msg_delete(rng, scene):
    api = scene.apis["MessageAPI"]
    receivers = {uid for m in api.inbox for uid in m}
    if not (names := [n for n, uid in api.user_map.items() if uid in receivers]):
        return None
    login, name = _message_login(rng, scene), rng.choice(names)
    scene("delete_message", receiver_id=scene("get_user_id", user=name)["user_id"])
    return login + say(rng, "Delete the latest message sent to {n}.", "Remove my last message to {n}.", n=name)


# ---- TwitterAPI ---------------------------------------------------------------------------------------


def _twitter_login(rng: random.Random, scene: Scene) -> str:
    api = scene.apis["TwitterAPI"]
    if api.authenticated:
        return ""
    scene("authenticate_twitter", username=api.username, password=api.password)
    return say(rng, "My Twitter login is {u} / {p}. ", "Sign in as {u} with password {p}. ",
               u=api.username, p=api.password)


@template("TwitterAPI")
def tw_post(rng, scene):
    login = _twitter_login(rng, scene)
    api = scene.apis["TwitterAPI"]
    content = rng.choice(TWEETS).format(rng.choice(TOPICS))
    tags = rng.sample(TAGS, rng.randint(0, 2))
    mentions = ["@" + user for user in rng.sample(api.following_list, rng.randint(0, 1))]
    # tags and mentions always explicit: post_tweet's defaults are shared mutable lists in the BFCL class
    scene("post_tweet", content=content, tags=tags, mentions=mentions)
    extra = (" with the tags " + " ".join(tags) if tags else "") + (" mentioning " + mentions[0] if mentions else "")
    return login + say(rng, "Tweet '{c}'{e}.", "Post '{c}'{e}.", c=content, e=extra)


@template("TwitterAPI")
def tw_comment(rng, scene):
    api = scene.apis["TwitterAPI"]
    topics = [t for t in TOPICS if len(api.search_tweets(t)) == 1]  # unambiguous tweets only
    if not topics:
        return None
    login, topic, reply = _twitter_login(rng, scene), rng.choice(topics), rng.choice(MESSAGES)
    scene("comment", tweet_id=scene("search_tweets", keyword=topic)[0]["id"], comment_content=reply)
    return login + say(rng, "Find the tweet about {t} and reply '{r}'.", "Comment '{r}' on the {t} tweet.",
                       t=topic, r=reply)


@template("TwitterAPI")
def tw_follow(rng, scene):
    api = scene.apis["TwitterAPI"]
    if not (users := [u for u in HANDLES if u not in api.following_list and u != api.username]):
        return None
    login, user = _twitter_login(rng, scene), rng.choice(users)
    scene("follow_user", username_to_follow=user)
    scene("list_all_following")
    return login + say(rng, "Follow {u}, then list everyone I follow.", "Start following {u} and show my "
                       "following list.", u=user)


# ---- TradingBot ---------------------------------------------------------------------------------------


def _companies(scene: Scene) -> dict[str, str]:
    stocks = scene.apis["TradingBot"].stocks
    return {company: _symbol(company) for company in COMPANIES if _symbol(company) in stocks}


@template("TradingBot")
def tr_buy(rng, scene):
    api = scene.apis["TradingBot"]
    balance = api.account_info["balance"]
    if not (names := [c for c, s in _companies(scene).items() if api.stocks[s]["price"] <= balance]):
        return None
    name = rng.choice(names)
    symbol = scene("get_symbol_by_name", name=name)["symbol"]
    price = scene("get_stock_info", symbol=symbol)["price"]
    amount = rng.randint(1, min(20, int(balance // price)))
    scene("place_order", order_type="Buy", symbol=symbol, price=price, amount=amount)
    return say(rng, "Buy {n} shares of {c} at the current price.", "Place a buy order for {n} {c} shares at "
               "market price.", n=amount, c=name)


@template("TradingBot")
def tr_watch(rng, scene):
    watched = scene.apis["TradingBot"].watch_list
    if not (names := [c for c, s in _companies(scene).items() if s not in watched]):
        return None
    name = rng.choice(names)
    scene("add_to_watchlist", stock=scene("get_symbol_by_name", name=name)["symbol"])
    return say(rng, "Add {c} to my watchlist.", "Put {c} stock on the watchlist.", c=name)


@template("TradingBot")
def tr_fund(rng, scene):
    amount = rng.randrange(100, 5001, 50)
    scene("fund_account", amount=amount)
    return say(rng, "Deposit {a} dollars into my trading account.", "Fund my account with ${a}.", a=amount)


@template("TradingBot", held_out=True)
def tr_cancel(rng, scene):
    orders = scene.apis["TradingBot"].orders
    if not (ids := [i for i, o in orders.items() if o["status"] in ("Open", "Pending")]):
        return None
    order = rng.choice(ids)
    scene("get_order_details", order_id=order)
    scene("cancel_order", order_id=order)
    return say(rng, "Show order {i} and cancel it.", "Check the details of order {i}, then cancel it.", i=order)


# ---- VehicleControlAPI --------------------------------------------------------------------------------


@template("VehicleControlAPI")
def car_start(rng, scene):
    if scene.apis["VehicleControlAPI"].engine_state == "running":
        return None
    scene("lockDoors", unlock=False, door=list(DOORS))
    scene("pressBrakePedal", pedalPosition=1.0)
    scene("startEngine", ignitionMode="START")
    return say(rng, "Lock all doors and start the engine.", "Start the car (doors locked, brake fully pressed).",
               "Get the engine running; lock every door first.")


@template("VehicleControlAPI")
def car_climate(rng, scene):
    fahrenheit = rng.random() < 0.4
    temperature = rng.randint(60, 82) if fahrenheit else rng.randint(16, 28)
    fan, mode = rng.randrange(10, 101, 10), rng.choice(("auto", "cool", "heat", "defrost"))
    # unit only when not the default: "celsius" misspelt behaves as celsius, so it would be a free argument
    unit = {"unit": "fahrenheit"} if fahrenheit else {}
    scene("adjustClimateControl", temperature=temperature, fanSpeed=fan, mode=mode, **unit)
    return say(rng, "Set the AC to {t} degrees{u}, {m} mode, fan at {f}.", "Climate: {m} mode at {t}{u}, fan "
               "speed {f}.", t=temperature, u=" Fahrenheit" if fahrenheit else " Celsius", m=mode, f=fan)


@template("VehicleControlAPI")
def car_fuel(rng, scene):
    space = 50 - scene.apis["VehicleControlAPI"].fuelLevel
    if space < 1:
        return None
    if rng.random() < 0.5:
        level = scene("displayCarStatus", option="fuel")["fuelLevel"]
        scene("fillFuelTank", fuelAmount=50 - level)
        return say(rng, "Check the fuel level and fill the tank up to full (50 gallons).",
                   "Top up the tank to its 50 gallon capacity.")
    gallons = rng.randint(1, int(space))
    scene("fillFuelTank", fuelAmount=gallons)
    return say(rng, "Add {g} gallons of fuel.", "Put {g} gallons in the tank.", g=gallons)


@template("VehicleControlAPI")
def car_distance(rng, scene):
    api = scene.apis["VehicleControlAPI"]
    while True:  # the class knows distances for a few city pairs only
        a, b = rng.sample(CITIES, 2)
        if not failed(api.estimate_distance(api.get_zipcode_based_on_city(a)["zipcode"],
                                            api.get_zipcode_based_on_city(b)["zipcode"])):
            break
    scene("estimate_distance", cityA=scene("get_zipcode_based_on_city", city=a)["zipcode"],
          cityB=scene("get_zipcode_based_on_city", city=b)["zipcode"])
    return say(rng, "How far is {a} from {b}?", "What's the distance between {a} and {b}?", a=a, b=b)


# ---- held-out classes ---------------------------------------------------------------------------------


@template("TicketAPI")
def ticket_create(rng, scene):
    title, text, priority = rng.choice(TICKET_TITLES), rng.choice(MESSAGES), rng.randint(1, 5)
    scene("create_ticket", title=title, description=text, priority=priority)
    return say(rng, "Open a ticket '{t}' saying '{d}' with priority {p}.", "File a priority {p} support ticket "
               "titled '{t}': {d}", t=title, d=text, p=priority)


@template("TicketAPI")
def ticket_resolve(rng, scene):
    queue = scene.apis["TicketAPI"].ticket_queue
    if not (ids := [t["id"] for t in queue if t["status"] != "Resolved"]):
        return None
    ticket, note = rng.choice(ids), rng.choice(RESOLUTIONS)
    scene("resolve_ticket", ticket_id=ticket, resolution=note)
    return say(rng, "Resolve ticket {i} with the note '{r}'.", "Mark ticket #{i} resolved: {r}.", i=ticket, r=note)


@template("TicketAPI")
def ticket_priority(rng, scene):
    ticket = rng.choice(scene.apis["TicketAPI"].ticket_queue)
    priority = rng.choice([p for p in range(1, 6) if p != ticket["priority"]])
    scene("get_ticket", ticket_id=ticket["id"])
    scene("edit_ticket", ticket_id=ticket["id"], updates={"priority": priority})
    return say(rng, "Show ticket {i} and set its priority to {p}.", "Look up ticket #{i}, then change its priority "
               "to {p}.", i=ticket["id"], p=priority)


@template("TicketAPI")
def ticket_close(rng, scene):
    api = scene.apis["TicketAPI"]
    mine = api.get_user_tickets("Open")
    if not (titles := [t["title"] for t in mine if [u["title"] for u in mine].count(t["title"]) == 1]):
        return None
    title = rng.choice(titles)
    opened = scene("get_user_tickets", status="Open")
    scene("close_ticket", ticket_id=next(t["id"] for t in opened if t["title"] == title))
    return say(rng, "Close my open ticket '{t}'.", "Find my open ticket about '{t}' and close it.", t=title)


@template("TravelAPI")
def travel_exchange(rng, scene):
    value, targets = rng.randint(10, 2000), rng.sample(CURRENCIES, rng.randint(1, 2))
    for target in targets:
        scene("compute_exchange_rate", base_currency="USD", target_currency=target, value=value)
    return say(rng, "How much is {v} USD in {c}?", "Convert {v} US dollars to {c}.", v=value, c=" and ".join(targets))


# ---- tasks --------------------------------------------------------------------------------------------


def _short(spec: dict) -> dict:
    """BFCL descriptions open with a long class preamble; keep only the function's own description."""
    return {**spec, "description": spec["description"].split("Tool description:", 1)[-1].strip()}


def _content_bucket(turns: list[list[str]], truth: list[list[ToolCall]]) -> int:
    blob = json.dumps([turns, [[[c.name, c.arguments] for c in calls] for calls in truth]], sort_keys=True)
    return int(hashlib.sha256(blob.encode()).hexdigest(), 16) % TEST_SHARE


def _attempt(split: str, index: int, rng: random.Random) -> tuple[Task, list[str]] | None:
    pool = [t for t in TEMPLATES.values() if t.held_out == (split == "ood_content")]
    chosen = rng.sample(sorted({t.cls for t in pool}), rng.choice((1, 1, 2)))
    configs = {cls: SCENARIOS[cls](rng) for cls in chosen if cls in SCENARIOS}
    scene = Scene({cls: configs.get(cls, {}) for cls in chosen})
    turns, truth, used = [], [], []
    for _ in range(rng.choices((1, 2, 3), weights=(4, 4, 3))[0]):
        options = [t for t in pool if t.cls in chosen]
        rng.shuffle(options)
        for option in options:
            scene.calls = []
            if (text := option.make(rng, scene)) is not None:
                turns.append([text])
                truth.append(scene.calls)
                used.append(option)
                break
    if not turns:
        return None
    classes = list(dict.fromkeys(t.cls for t in used))
    specs = {spec["name"]: _short(spec) for cls in classes for spec in class_tools(cls)}
    called = list(dict.fromkeys(c.name for calls in truth for c in calls))
    spare = sorted(set(specs) - set(called))
    tools = [specs[name] for name in called + rng.sample(spare, min(len(spare), rng.randint(1, 2)))]
    rng.shuffle(tools)
    task = Task(id=f"synth_{split}_{index}", env="synth", category=used[0].cls, turns=turns, ground_truth=truth,
                classes=classes, initial_config={c: configs[c] for c in classes if c not in STATELESS_CLASSES},
                tools=tools)
    return task, [t.name for t in used]


def _build(split: str, index: int, seed: int) -> tuple[Task, list[str]]:
    if split not in SPLITS:
        raise ValueError(f"unknown synth split {split!r}; choose from {', '.join(SPLITS)}")
    rng = random.Random(f"{seed}-{split}-{index}")
    for _ in count():  # rejection: train and test take disjoint hash buckets of the content
        built = _attempt(split, index, rng)
        if built is None:
            continue
        bucket = _content_bucket(built[0].turns, built[0].ground_truth)
        if split == "ood_content" or (bucket == 0) == (split == "test"):
            return built
    raise AssertionError("unreachable")


def generate_task(split: str, index: int, seed: int = 0) -> Task:
    """Task ``index`` of ``split``: the same inputs always give the same task."""
    return _build(split, index, seed)[0]


def task_templates(task: Task, seed: int = 0) -> list[str]:
    """The templates that made each turn of ``task`` (re-derived from its id and the seed it was made with)."""
    split, index = task.id.removeprefix("synth_").rsplit("_", 1)
    rebuilt, names = _build(split, int(index), seed)
    if rebuilt != task:
        raise ValueError(f"{task.id} was not generated with seed {seed}")
    return names


def load_tasks(split: str, seed: int = 0) -> list[Task]:
    """The default tasks of ``split``: train 1000, test 200, ood_content 200."""
    if split not in SPLITS:
        raise ValueError(f"unknown synth split {split!r}; choose from {', '.join(SPLITS)}")
    return [generate_task(split, index, seed) for index in range(SPLIT_SIZES[split])]
