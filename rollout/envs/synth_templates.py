"""Templates of the synth environment: each a function ``(rng, scene) -> user text`` that picks values
from the live state of a task's API instances and issues its calls through the scene (which executes and
records them), plus the procedural initial states they draw from.
"""


from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from bfcl_eval.eval_checker.multi_turn_eval.func_source_code.gorilla_file_system import Directory, File

from rollout.envs.base import api_class, load_instances, public_methods
from rollout.types import ToolCall

HELD_OUT_CLASSES = ("TicketAPI", "TravelAPI")  # appear only in ood_content

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


@dataclass(frozen=True)
class Template:
    name: str
    cls: str
    held_out: bool
    make: Callable[[random.Random, Scene], str]


TEMPLATES: dict[str, Template] = {}


def template(cls: str, held_out: bool = False):
    def register(make):
        TEMPLATES[make.__name__] = Template(make.__name__, cls, held_out or cls in HELD_OUT_CLASSES, make)
        return make

    return register


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
def _symbol(company: str) -> str:
    return api_class("TradingBot")().get_symbol_by_name(company)["symbol"]  # the class's own name map


def trading_scenario(rng: random.Random) -> dict:
    stocks = {}
    for company in rng.sample(COMPANIES, rng.randint(4, 7)):
        price = round(rng.uniform(15, 900), 2)
        stocks[_symbol(company)] = {
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


# ---- GorillaFileSystem ----------------------------------------------------------------------------


def _tree_names(directory: Directory) -> set[str]:
    inner = [_tree_names(item) for item in directory.contents.values() if isinstance(item, Directory)]
    return set(directory.contents).union(*inner)


def _files(directory: Directory, min_lines: int) -> list[str]:
    items = directory.contents.items()
    return [n for n, f in items if isinstance(f, File) and len(f.content.splitlines()) >= min_lines]


def _go(rng: random.Random, scene: Scene, min_lines: int | None = 1) -> tuple[Directory, str | None]:
    """Walk to a folder the user can name from where the shell stands (here, a child, or the parent),
    recording the cd calls; returns it with one of its files at least ``min_lines`` long (None: no file)."""
    here = scene.apis["GorillaFileSystem"]._current_dir
    options = [(here, [])] + [(d, [n]) for n, d in here.contents.items() if isinstance(d, Directory)]
    options += [(here.parent, [".."])] if here.parent is not None else []
    folder, path = pick(rng, [o for o in options if min_lines is None or _files(o[0], min_lines)])
    for step in path:
        scene("cd", folder=step)
    return folder, None if min_lines is None else rng.choice(_files(folder, min_lines))


def _new_name(rng: random.Random, scene: Scene, pool: list[str]) -> str:
    taken = _tree_names(scene.apis["GorillaFileSystem"].root)
    return rng.choice([name for name in pool if name not in taken])


@template("GorillaFileSystem")
def fs_read(rng, scene):
    folder, name = _go(rng, scene)
    scene("cat", file_name=name)
    return say(rng, "Show me {f} in the {d} folder.", "What does {f} in {d} say?",
               "Open {d}/{f} and print it.", f=name, d=folder.name)


@template("GorillaFileSystem")
def fs_note(rng, scene):
    name, text = _new_name(rng, scene, [s + ".txt" for s in STEMS]), " ".join(rng.sample(WORDS, 3))
    folder, _ = _go(rng, scene, None)
    scene("touch", file_name=name)
    scene("echo", content=text, file_name=name)
    return say(rng, "In {d}, create {f} containing '{t}'.",
               "Make a file {f} in the {d} folder and write '{t}' in it.", d=folder.name, f=name, t=text)


@template("GorillaFileSystem")
def fs_mkdir_move(rng, scene):
    new = _new_name(rng, scene, DIRS)
    folder, name = _go(rng, scene)
    scene("mkdir", dir_name=new)
    scene("mv", source=name, destination=new)
    return say(rng, "Create a folder {n} inside {d} and move {f} into it.",
               "Put {f} from {d} into a new folder called {n} next to it.", n=new, d=folder.name, f=name)


@template("GorillaFileSystem")
def fs_grep(rng, scene):
    folder, name = _go(rng, scene)
    word = rng.choice(folder.contents[name].content.split())
    scene("grep", file_name=name, pattern=word)
    return say(rng, "Which lines of {f} in {d} mention '{w}'?", "Search {d}/{f} for '{w}'.",
               f=name, d=folder.name, w=word)


@template("GorillaFileSystem")
def fs_tail(rng, scene):
    folder, name = _go(rng, scene, min_lines=2)
    # fewer lines than the file has, so that one line more or less is a different answer
    lines = rng.randint(1, len(folder.contents[name].content.splitlines()) - 1)
    scene("tail", file_name=name, lines=lines)
    return say(rng, "Show the last {k} lines of {f} in {d}.", "What are the final {k} lines of {d}/{f}?",
               k=lines, f=name, d=folder.name)


@template("GorillaFileSystem", held_out=True)
def fs_copy_sort(rng, scene):
    new = _new_name(rng, scene, FILE_NAMES)
    folder, name = _go(rng, scene)
    scene("cp", source=name, destination=new)
    scene("sort", file_name=new)
    return say(rng, "Copy {f} in {d} to {n}, then show the copy sorted.",
               "Duplicate {d}/{f} as {n} and sort {n}.", f=name, d=folder.name, n=new)


# ---- MathAPI ------------------------------------------------------------------------------------------


@template("MathAPI")
def math_stats(rng, scene):
    numbers = rng.sample(range(1, 100), rng.randint(3, 6))
    function, label = rng.choice((("mean", "average"), ("sum_values", "sum"), ("max_value", "largest value"),
                                  ("min_value", "smallest value"),
                                  ("standard_deviation", "standard deviation")))
    scene(function, numbers=numbers)
    return say(rng, "What is the {l} of {n}?", "Give me the {l} of these numbers: {n}.", l=label,
               n=", ".join(map(str, numbers)))


@template("MathAPI")
def math_chain(rng, scene):
    a, b, c = rng.randint(2, 500), rng.randint(2, 500), rng.randint(2, 20)
    first, second = rng.choice(("add", "subtract")), rng.choice(("multiply", "divide"))
    scene(second, a=scene(first, a=a, b=b)["result"], b=c)
    verbs = {"add": "Add {a} and {b}", "subtract": "Subtract {b} from {a}", "multiply": "multiply it by {c}",
             "divide": "divide it by {c}"}
    return (verbs[first] + rng.choice((", then ", " and then ")) + verbs[second] + ".").format(a=a, b=b, c=c)


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
    login, api, text = _message_login(rng, scene), scene.apis["MessageAPI"], rng.choice(MESSAGES)
    name = rng.choice([n for n, uid in api.user_map.items() if uid != api.current_user])
    scene("send_message", receiver_id=scene("get_user_id", user=name)["user_id"], message=text)
    return login + say(rng, "Send '{m}' to {n}.", "Message {n}: '{m}'", m=text, n=name)


@template("MessageAPI")
def msg_add_contact(rng, scene):
    name = rng.choice([n for n in NAMES if n not in scene.apis["MessageAPI"].user_map])
    login, text = _message_login(rng, scene), rng.choice(MESSAGES)
    scene("send_message", receiver_id=scene("add_contact", user_name=name)["user_id"], message=text)
    return login + say(rng, "Add {n} to my contacts and send them '{m}'.",
                       "Save {n} as a contact, then message them '{m}'", n=name, m=text)


# ---- TwitterAPI ---------------------------------------------------------------------------------------


def _twitter_login(rng: random.Random, scene: Scene) -> str:
    api = scene.apis["TwitterAPI"]
    if api.authenticated:
        return ""
    scene("authenticate_twitter", username=api.username, password=api.password)
    return say(rng, "My Twitter login is {u} / {p}. ", "Sign in as {u} with password {p}. ", u=api.username,
               p=api.password)


@template("TwitterAPI")
def tw_post(rng, scene):
    login, api = _twitter_login(rng, scene), scene.apis["TwitterAPI"]
    content, tags = rng.choice(TWEETS).format(rng.choice(TOPICS)), rng.sample(TAGS, rng.randint(0, 2))
    mentions = ["@" + user for user in rng.sample(api.following_list, rng.randint(0, 1))]
    # tags and mentions always explicit: post_tweet's defaults are mutable lists shared by all instances
    scene("post_tweet", content=content, tags=tags, mentions=mentions)
    tagged = " with the tags " + " ".join(tags) if tags else ""
    extra = tagged + "".join(f" mentioning {m}" for m in mentions)
    return login + say(rng, "Tweet '{c}'{e}.", "Post '{c}'{e}.", c=content, e=extra)


@template("TwitterAPI")
def tw_comment(rng, scene):
    api = scene.apis["TwitterAPI"]
    topic = pick(rng, [t for t in TOPICS if len(api.search_tweets(t)) == 1])  # unambiguous tweets only
    login, reply = _twitter_login(rng, scene), rng.choice(MESSAGES)
    scene("comment", tweet_id=scene("search_tweets", keyword=topic)[0]["id"], comment_content=reply)
    return login + say(rng, "Find the tweet about {t} and reply '{r}'.", "Comment '{r}' on the {t} tweet.",
                       t=topic, r=reply)


# ---- TradingBot ---------------------------------------------------------------------------------------


def _companies(scene: Scene, keep: Callable[[str], bool]) -> list[str]:
    stocks = scene.apis["TradingBot"].stocks
    return [company for company in COMPANIES if _symbol(company) in stocks and keep(_symbol(company))]


@template("TradingBot")
def tr_buy(rng, scene):
    api = scene.apis["TradingBot"]
    balance = api.account_info["balance"]
    name = pick(rng, _companies(scene, lambda symbol: api.stocks[symbol]["price"] <= balance))
    symbol = scene("get_symbol_by_name", name=name)["symbol"]
    price = scene("get_stock_info", symbol=symbol)["price"]
    amount = rng.randint(1, min(20, int(balance // price)))
    scene("place_order", order_type="Buy", symbol=symbol, price=price, amount=amount)
    return say(rng, "Buy {n} shares of {c} at the current price.", "Place a buy order for {n} {c} shares at "
               "market price.", n=amount, c=name)


@template("TradingBot")
def tr_watch(rng, scene):
    name = pick(rng, _companies(scene, lambda symbol: symbol not in scene.apis["TradingBot"].watch_list))
    scene("add_to_watchlist", stock=scene("get_symbol_by_name", name=name)["symbol"])
    return say(rng, "Add {c} to my watchlist.", "Put {c} stock on the watchlist.", c=name)


@template("TradingBot", held_out=True)
def tr_cancel(rng, scene):
    orders = scene.apis["TradingBot"].orders
    order = pick(rng, [i for i, o in orders.items() if o["status"] in ("Open", "Pending")])
    scene("get_order_details", order_id=order)
    scene("cancel_order", order_id=order)
    return say(rng, "Show order {i} and cancel it.", "Check the details of order {i}, then cancel it.",
               i=order)


# ---- VehicleControlAPI --------------------------------------------------------------------------------


@template("VehicleControlAPI")
def car_start(rng, scene):
    if scene.apis["VehicleControlAPI"].engine_state == "running":
        raise Skip
    scene("lockDoors", unlock=False, door=list(DOORS))
    scene("pressBrakePedal", pedalPosition=1.0)
    scene("startEngine", ignitionMode="START")
    return say(rng, "Lock all doors and start the engine.", "Get the engine running; lock every door first.",
               "Start the car (doors locked, brake fully pressed).")


@template("VehicleControlAPI")
def car_distance(rng, scene):
    api = scene.apis["VehicleControlAPI"]

    def zipcode(city: str) -> str:
        return api.get_zipcode_based_on_city(city)["zipcode"]

    while True:  # the class knows the distances of a few city pairs only
        a, b = rng.sample(CITIES, 2)
        if not failed(api.estimate_distance(zipcode(a), zipcode(b))):
            break
    scene("estimate_distance", cityA=scene("get_zipcode_based_on_city", city=a)["zipcode"],
          cityB=scene("get_zipcode_based_on_city", city=b)["zipcode"])
    return say(rng, "How far is {a} from {b}?", "What's the distance between {a} and {b}?", a=a, b=b)


# ---- held-out classes ---------------------------------------------------------------------------------


@template("TicketAPI")
def ticket_create(rng, scene):
    title, text, priority = rng.choice(TICKETS), rng.choice(MESSAGES), rng.randint(1, 5)
    scene("create_ticket", title=title, description=text, priority=priority)
    return say(rng, "Open a ticket '{t}' saying '{d}' with priority {p}.",
               "File a priority {p} support ticket titled '{t}': {d}", t=title, d=text, p=priority)


@template("TicketAPI")
def ticket_priority(rng, scene):
    ticket = rng.choice(scene.apis["TicketAPI"].ticket_queue)
    priority = rng.choice([p for p in range(1, 6) if p != ticket["priority"]])
    scene("get_ticket", ticket_id=ticket["id"])
    scene("edit_ticket", ticket_id=ticket["id"], updates={"priority": priority})
    return say(rng, "Show ticket {i} and set its priority to {p}.",
               "Look up ticket #{i}, then change its priority to {p}.", i=ticket["id"], p=priority)


@template("TicketAPI")
def ticket_close(rng, scene):
    titles = [t["title"] for t in scene.apis["TicketAPI"].get_user_tickets("Open")]
    title = pick(rng, [t for t in titles if titles.count(t) == 1])
    opened = scene("get_user_tickets", status="Open")
    scene("close_ticket", ticket_id=next(t["id"] for t in opened if t["title"] == title))
    return say(rng, "Close my open ticket '{t}'.", "Find my open ticket about '{t}' and close it.", t=title)


@template("TravelAPI")
def travel_exchange(rng, scene):
    value, targets = rng.randint(10, 2000), rng.sample(CURRENCIES, rng.randint(1, 2))
    for target in targets:
        scene("compute_exchange_rate", base_currency="USD", target_currency=target, value=value)
    return say(rng, "How much is {v} USD in {c}?", "Convert {v} US dollars to {c}.", v=value,
               c=" and ".join(targets))


# ---- tasks --------------------------------------------------------------------------------------------
