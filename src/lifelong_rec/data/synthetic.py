"""A seeded synthetic shop: drifting tastes, arriving and fading items, popularity waves, a
purchase funnel, and item text built from topic words.

It is the embedded default data of the demo and the tests: realistic enough that a recommender
that learns continually beats one that does not, small enough to run in seconds.

How the stream is made
----------------------
- Topics: each item belongs mostly to one topic (80 %) and a little to all others; its title
  and text are built from that topic's words.
- Users: each has a taste, a distribution over topics, that drifts linearly from a starting
  taste to a second one over the stream (``drift`` sets how far it gets).
- Items: a share (``initial_items``) exists at the start, the rest arrive at uniform times;
  an item's appeal halves every ``item_half_life_days`` after its arrival.
- Popularity waves: each topic's appeal rises and falls on a sine wave of its own period.
- Sessions: a user arrives (active users more often), views a few items a minute or so apart;
  each view is of item i with probability proportional to
  ``taste(t) . topics_i * quality_i * wave_topic(i)(t) * freshness_i(t)``.
- Funnel: a view leads to a click, a click to a cart, a cart to a purchase, with the rates of
  ``funnel`` scaled by how well the item matches the user's taste; carts and purchases carry
  the item's price as their value.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lifelong_rec.checks import check_positive_ints
from lifelong_rec.data.cleaning import CleaningConfig, clean
from lifelong_rec.data.dataset import Dataset
from lifelong_rec.events import Catalog

_TOPICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Kitchen", ("skillet", "kettle", "knife", "blender", "spatula", "teapot", "wok")),
    ("Garden", ("trowel", "planter", "hose", "seeds", "pruner", "birdhouse", "compost")),
    ("Running", ("sneakers", "shorts", "watch", "socks", "jacket", "bottle", "cap")),
    ("Books", ("novel", "cookbook", "atlas", "biography", "thriller", "anthology", "diary")),
    ("Music", ("headphones", "vinyl", "guitar", "speaker", "ukulele", "keyboard", "drum")),
    ("Toys", ("puzzle", "robot", "blocks", "kite", "doll", "train", "yo-yo")),
    ("Beauty", ("serum", "lipstick", "shampoo", "perfume", "lotion", "brush", "mask")),
    ("Camping", ("tent", "lantern", "sleeping bag", "stove", "compass", "hammock", "tarp")),
    ("Office", ("notebook", "pen", "stapler", "lamp", "chair", "organizer", "planner")),
    ("Pets", ("leash", "collar", "bowl", "catnip", "bed", "brush", "treats")),
    ("Baking", ("whisk", "mixer", "tin", "flour", "rolling pin", "scale", "sieve")),
    ("Cycling", ("helmet", "gloves", "pump", "light", "lock", "saddle", "bell")),
)
_ADJECTIVES = (
    "classic", "compact", "deluxe", "eco", "handmade", "vintage", "smart", "organic",
    "premium", "travel", "mini", "bright", "quiet", "rugged", "soft", "bold",
)  # fmt: skip
_EPOCH_START = pd.Timestamp("2026-01-05", tz="UTC").timestamp()
_DAY = 86_400.0


def synthetic_stream(
    n_users: int = 1_000,
    n_items: int = 600,
    n_events: int = 40_000,
    n_topics: int = 8,
    days: float = 28.0,
    drift: float = 0.6,
    initial_items: float = 0.4,
    item_half_life_days: float = 14.0,
    funnel: tuple[float, float, float] = (0.3, 0.35, 0.5),
    dirty_fraction: float = 0.0,
    start: float = _EPOCH_START,
    seed: int = 0,
    config: CleaningConfig | None = None,
) -> Dataset:
    """Generate a seeded, drifting e-commerce event stream with item text.

    Parameters
    ----------
    n_users, n_items : int
    n_events : int
        About how many events (views and the clicks, carts and purchases they lead to).
    n_topics : int
        Number of item topics, 1 to 12.
    days : float
        Time span of the stream.
    drift : float
        How far each user's taste moves from its start to its end, 0 (none) to 1.
    initial_items : float
        Share of items that exist at the start; the rest arrive during the stream.
    item_half_life_days : float
        An item's appeal halves this often after its arrival.
    funnel : (float, float, float)
        Base rates of click given view, cart given click, purchase given cart.
    dirty_fraction : float
        Share of extra rows with the problems cleaning must catch (empty ids, bad or
        out-of-range timestamps, unknown kinds, bad values, exact duplicates, a bot burst), to
        show the cleaning report at work.
    start : float
        Unix time of the first event.
    seed : int
    config : CleaningConfig, optional
        Cleaning of the generated rows (``now`` defaults to the end of the stream).

    Returns
    -------
    Dataset
        Clean events in time order, the catalog, the cleaning report and the rejected rows.

    Examples
    --------
    >>> data = synthetic_stream(n_users=50, n_items=40, n_events=500, seed=1)
    >>> len(data.events) > 400, len(data.catalog)
    (True, 40)
    """
    _check(n_users, n_items, n_events, n_topics, days, drift, initial_items, funnel, dirty_fraction)
    rng = np.random.default_rng(seed)
    span = days * _DAY

    # Users: a starting and an ending taste over topics, and how active each is.
    taste_start = rng.dirichlet(np.full(n_topics, 0.3), size=n_users)
    taste_end = rng.dirichlet(np.full(n_topics, 0.3), size=n_users)
    activity = rng.lognormal(0.0, 1.0, size=n_users)

    # Items: topic mixture, quality, price, arrival.
    main_topic = rng.integers(n_topics, size=n_items)
    topics = 0.2 * rng.dirichlet(np.ones(n_topics), size=n_items)
    topics[np.arange(n_items), main_topic] += 0.8
    quality = rng.lognormal(0.0, 0.5, size=n_items)
    price = np.round(rng.lognormal(3.0, 0.8, size=n_items), 2)
    arrival = np.where(rng.random(n_items) < initial_items, 0.0, rng.uniform(0, span, n_items))
    arrival[0] = 0.0  # at least one item exists from the start
    wave_period = rng.uniform(3, 10, size=n_topics) * _DAY
    wave_phase = rng.uniform(0, 2 * np.pi, size=n_topics)

    # Sessions of views.
    rates = np.array(funnel)
    per_view = 1 + rates[0] + rates[0] * rates[1] + rates[0] * rates[1] * rates[2]
    n_views = max(1, round(n_events / per_view))
    session_length = rng.geometric(0.25, size=max(1, n_views // 4))
    session_length = session_length[np.cumsum(session_length) <= n_views]
    if session_length.sum() < n_views:
        session_length = np.append(session_length, n_views - session_length.sum())
    session_user = rng.choice(n_users, size=len(session_length), p=activity / activity.sum())
    session_start = rng.uniform(0, span, size=len(session_length))
    view_user = np.repeat(session_user, session_length)
    gaps = rng.exponential(60.0, size=n_views)
    elapsed = np.cumsum(gaps)
    session_first = np.cumsum(session_length) - session_length
    within = elapsed - np.repeat(elapsed[session_first], session_length)  # 0 at session start
    view_time = np.minimum(np.repeat(session_start, session_length) + within, span - 1)

    # Which item each view is of: sample from the appeal of every item at that time (Gumbel-max,
    # over blocks of views so the memory stays small: about 4M (view, item) pairs a block, the
    # same draws in the same order whatever the blocks).
    view_item = np.empty(n_views, dtype=np.int64)
    match = np.empty(n_views)
    per_block = max(1, min(2048, 4_000_000 // n_items))
    for block in np.array_split(np.arange(n_views), max(1, n_views // per_block)):
        t = view_time[block][:, None]
        mix = drift * t / span
        taste = (1 - mix) * taste_start[view_user[block]] + mix * taste_end[view_user[block]]
        affinity = taste @ topics.T  # (block, items)
        wave = np.exp(0.5 * np.sin(2 * np.pi * t / wave_period + wave_phase))  # (block, topics)
        age = t - arrival[None, :]
        log_appeal = (
            np.log(affinity)
            + np.log(quality)
            + np.log(np.take_along_axis(wave, np.broadcast_to(main_topic, age.shape), axis=1))
            - np.log(2) * np.maximum(age, 0) / (item_half_life_days * _DAY)
        )
        log_appeal[age < 0] = -np.inf  # not arrived yet
        chosen = np.argmax(log_appeal + rng.gumbel(size=log_appeal.shape), axis=1)
        view_item[block] = chosen
        match[block] = affinity[np.arange(len(block)), chosen] / affinity.max(axis=1)

    # The funnel: each step's chance grows with how well the item matches the user.
    steps = [("view", np.arange(n_views), view_time)]
    reached, when = np.arange(n_views), view_time
    for kind, rate, delay in zip(
        ("click", "cart", "purchase"), rates, (30.0, 60.0, 120.0), strict=True
    ):
        go = rng.random(len(reached)) < np.clip(rate * (0.5 + match[reached]), 0, 1)
        reached = reached[go]
        when = np.minimum(when[go] + rng.exponential(delay, size=len(reached)), span - 1)
        steps.append((kind, reached, when))

    rows = [
        pd.DataFrame(
            {
                "user": np.char.add("u", np.char.zfill(view_user[views].astype(str), 5)),
                "item": np.char.add("i", np.char.zfill(view_item[views].astype(str), 5)),
                "timestamp": start + times,
                "kind": kind,
                "value": price[view_item[views]] if kind in ("cart", "purchase") else np.nan,
            }
        )
        for kind, views, times in steps
    ]
    frame = pd.concat(rows, ignore_index=True).sort_values("timestamp", kind="stable")
    frame = frame.reset_index(drop=True)
    if dirty_fraction > 0:
        frame = _add_dirt(frame, dirty_fraction, rng)
    config = config or CleaningConfig(now=start + span)
    cleaned = clean(frame, source=f"synthetic(seed={seed})", config=config)
    return Dataset(
        events=cleaned.events,
        catalog=_catalog(main_topic, price, arrival + start, rng),
        report=cleaned.report,
        rejected=cleaned.rejected,
        name=f"synthetic(seed={seed})",
    )


def _catalog(main_topic: np.ndarray, price: np.ndarray, arrival: np.ndarray, rng) -> Catalog:
    n = len(main_topic)
    adjectives = np.asarray(_ADJECTIVES)[rng.integers(len(_ADJECTIVES), size=n)]
    word_pick = rng.integers(7, size=n)
    records = []
    for index in range(n):
        topic, words = _TOPICS[main_topic[index]]
        noun = words[word_pick[index]]
        title = f"{adjectives[index].capitalize()} {topic.lower()} {noun}"
        records.append(
            {
                "item": f"i{index:05d}",
                "title": title,
                "text": f"{title}. A {adjectives[index]} {noun} from our {topic} range.",
                "categories": (topic,),
                "attributes": {"price": float(price[index]), "arrival": float(arrival[index])},
            }
        )
    return Catalog.from_records(records)


def _add_dirt(frame: pd.DataFrame, fraction: float, rng) -> pd.DataFrame:
    """Append corrupted copies of random rows, spread over the problems cleaning catches."""
    n_dirty = max(8, round(fraction * len(frame)))
    dirty = frame.sample(n=n_dirty, replace=True, random_state=rng.integers(2**31)).astype(object)
    dirty = dirty.reset_index(drop=True)
    problem = np.arange(n_dirty) % 7
    dirty.loc[problem == 0, "user"] = ""
    dirty.loc[problem == 1, "timestamp"] = "yesterday-ish"
    dirty.loc[problem == 2, "timestamp"] = 0.0  # 1970: out of range
    dirty.loc[problem == 3, "kind"] = "hover"
    dirty.loc[problem == 4, "kind"] = "cart"
    dirty.loc[problem == 4, "value"] = "n/a"
    # problem 5: left as is, an exact duplicate of a real row
    dirty.loc[problem == 6, "kind"] = "rating"
    dirty.loc[problem == 6, "value"] = 42.0  # outside the rating range
    bot = pd.DataFrame(
        {
            "user": "u-bot",
            "item": frame["item"].sample(n=40, replace=True, random_state=1).to_numpy(),
            "timestamp": float(frame["timestamp"].median()) + rng.uniform(0, 0.9, size=40),
            "kind": "click",
            "value": np.nan,
        }
    )
    return pd.concat([frame.astype(object), dirty, bot.astype(object)], ignore_index=True)


def _check(n_users, n_items, n_events, n_topics, days, drift, initial_items, funnel, dirty):
    check_positive_ints(n_users=n_users, n_items=n_items, n_events=n_events)
    if not 1 <= n_topics <= len(_TOPICS):
        raise ValueError(f"n_topics must be between 1 and {len(_TOPICS)}, got {n_topics!r}")
    if not days > 0:
        raise ValueError(f"days must be > 0, got {days!r}")
    for name, value in (
        ("drift", drift),
        ("initial_items", initial_items),
        ("dirty_fraction", dirty),
    ):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
    if len(funnel) != 3 or not all(0 <= rate <= 1 for rate in funnel):
        raise ValueError(f"funnel must be three rates between 0 and 1, got {funnel!r}")
