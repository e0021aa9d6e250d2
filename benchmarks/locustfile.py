"""Mixed read/write load on the service with locust (``benchmarks/service_workers.py`` drives it).

Each simulated client mostly reads recommendations (known users, some brand-new ids, a
second page, explained lists), sometimes similar items, and writes events (typed, with
client event ids) for the users it reads. Configuration through the environment:

* ``ATTNREC_API_KEY``: the write key (also read);
* ``LOAD_USERS`` / ``LOAD_ITEMS``: comma-separated raw ids to draw from (default u1..u500, i1..i200).
"""

from __future__ import annotations

import os
import random
import uuid
from urllib.parse import quote

from locust import FastHttpUser, between, task

KEY = os.environ.get("ATTNREC_API_KEY", "")
USERS = os.environ.get("LOAD_USERS", ",".join(f"u{i}" for i in range(1, 501))).split(",")
ITEMS = os.environ.get("LOAD_ITEMS", ",".join(f"i{i}" for i in range(1, 201))).split(",")


class Shopper(FastHttpUser):
    wait_time = between(0.0, 0.01)

    def on_start(self) -> None:
        self.headers = {"X-API-Key": KEY}
        self.user = random.choice(USERS)

    @task(10)
    def recommendations(self) -> None:
        self.client.get(f"/users/{quote(self.user, safe='')}/recommendations?k=10",
                        headers=self.headers, name="/users/{user}/recommendations")

    @task(2)
    def second_page(self) -> None:
        self.client.get(f"/users/{quote(self.user, safe='')}/recommendations?k=10&offset=10",
                        headers=self.headers, name="/users/{user}/recommendations?offset")

    @task(1)
    def explained(self) -> None:
        self.client.get(f"/users/{quote(self.user, safe='')}/recommendations?k=5&explain=true",
                        headers=self.headers, name="/users/{user}/recommendations?explain")

    @task(1)
    def newcomer(self) -> None:
        self.client.get(f"/users/visitor-{uuid.uuid4().hex[:10]}/recommendations?k=10",
                        headers=self.headers, name="/users/{new}/recommendations")

    @task(2)
    def similar(self) -> None:
        self.client.get(f"/items/{quote(random.choice(ITEMS), safe='')}/similar?k=10",
                        headers=self.headers, name="/items/{item}/similar")

    @task(4)
    def event(self) -> None:
        kind = random.choices(["view", "purchase", "dislike", "impression"], [6, 1, 1, 2])[0]
        self.client.post("/events", json={"user": self.user, "item": random.choice(ITEMS),
                                          "event_type": kind, "event_id": uuid.uuid4().hex},
                         headers=self.headers, name="/events")
        if random.random() < 0.1:
            self.user = random.choice(USERS)
