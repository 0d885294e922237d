"""Templates of the synth environment: each a function ``(rng, scene) -> user text`` that picks values
from the live state of a task's API instances and issues its calls through the scene (which executes and
records them); the initial states and value pools they draw from are synth_scene.py's.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from bfcl_eval.eval_checker.multi_turn_eval.func_source_code.gorilla_file_system import Directory, File

from rollout.envs.synth_scene import (
    CITIES,
    COMPANIES,
    CURRENCIES,
    DIRS,
    DOORS,
    FILE_NAMES,
    MESSAGES,
    NAMES,
    STEMS,
    TAGS,
    TICKETS,
    TOPICS,
    TWEETS,
    WORDS,
    Scene,
    Skip,
    failed,
    pick,
    say,
    stock_symbol,
)

HELD_OUT_CLASSES = ("TicketAPI", "TravelAPI")  # appear only in ood_content


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
    return [company for company in COMPANIES if stock_symbol(company) in stocks and keep(stock_symbol(company))]


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
