"""Writes the `orders` dataset: a CSV of synthetic shop orders.

    python3 gen.py [OUTPUT] [ROWS]      (default: orders.csv, 1000000)

The output is the same bytes on every run and every Python 3: the random
numbers come from SplitMix64 written out here (not from the `random` module,
whose algorithms may change between versions), every value is formatted by
hand, and the file is written as UTF-8 with '\\n' line endings.

Columns (a header row first):
    id           1..ROWS, in order
    ordered_at   'YYYY-MM-DD HH:MM:SS', 2023-01-01 .. 2024-12-31, growing with id
                 (give or take ten minutes)
    customer_id  1..50000
    category     one of 36 lowercase names (some with a space or '&')
    city         one of 48 city names (some with spaces, some non-ASCII)
    amount       0.50 .. 999.99, always two decimals
    quantity     1..20
    returned     0 or 1 (about 6% are 1)
No value contains a comma, a quote or a newline, so no field is quoted.
"""

import sys

CATEGORIES = [
    "appliances", "art supplies", "audio", "baby", "beauty", "books",
    "cameras", "cleaning", "clothing", "computers", "crafts", "drinks",
    "electronics", "fitness", "flowers", "food", "furniture", "games",
    "garden", "groceries", "health", "hobbies", "home & living", "jewelry",
    "kitchen", "lighting", "music", "office", "outdoors", "party", "pets",
    "phones", "shoes", "sports", "tools", "toys",
]

CITIES = [
    "Amsterdam", "Athens", "Auckland", "Bangkok", "Barcelona", "Berlin",
    "Bogotá", "Boston", "Brussels", "Buenos Aires", "Cairo", "Cape Town",
    "Chicago", "Copenhagen", "Dublin", "Helsinki", "Hong Kong", "Istanbul",
    "Jakarta", "Kraków", "Lagos", "Lima", "Lisbon", "London", "Los Angeles",
    "Madrid", "Melbourne", "Mexico City", "Milan", "Montréal", "Mumbai",
    "Nairobi", "New York", "Oslo", "Paris", "Prague", "Reykjavík", "Rome",
    "Santiago", "São Paulo", "Seoul", "Singapore", "Stockholm", "Sydney",
    "Tokyo", "Toronto", "Vienna", "Zürich",
]

MASK = (1 << 64) - 1


class SplitMix64:
    """Steele, Lea and Flood's SplitMix64: 64-bit outputs from a 64-bit state."""

    def __init__(self, seed):
        self.state = seed & MASK

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def below(self, n):
        """0 <= x < n (the tiny modulo bias does not matter here)."""
        return self.next() % n


DAYS_IN_MONTH = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]


def calendar():
    """(year, month, day) of each day of 2023 and 2024, in order."""
    days = []
    for year in (2023, 2024):
        for month in range(1, 13):
            n = DAYS_IN_MONTH[month - 1] + (1 if month == 2 and year % 4 == 0 else 0)
            for day in range(1, n + 1):
                days.append("%04d-%02d-%02d" % (year, month, day))
    return days


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "orders.csv"
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 1000000
    rng = SplitMix64(20240607)
    days = calendar()
    span = len(days) * 86400
    ncat, ncity = len(CATEGORIES), len(CITIES)
    with open(out, "w", encoding="utf-8", newline="\n") as f:
        f.write("id,ordered_at,customer_id,category,city,amount,quantity,returned\n")
        batch = []
        for i in range(1, rows + 1):
            # Time grows with the id, with up to ten minutes of jitter.
            t = (i - 1) * span // rows + rng.below(600)
            if t >= span:
                t = span - 1
            day, sec = divmod(t, 86400)
            ts = "%s %02d:%02d:%02d" % (days[day], sec // 3600, sec // 60 % 60, sec % 60)
            # Skewed choices: the minimum of two draws favours the first names.
            cat = min(rng.below(ncat), rng.below(ncat))
            city = min(rng.below(ncity), rng.below(ncity))
            customer = 1 + rng.below(50000)
            # Cents: mostly small amounts, some large ones.
            r = rng.below(1000)
            if r < 700:
                cents = 50 + rng.below(9950)
            elif r < 950:
                cents = 10000 + rng.below(40000)
            else:
                cents = 50000 + rng.below(49999)
            quantity = 1 + min(rng.below(20), rng.below(20))
            returned = 1 if rng.below(100) < 6 else 0
            batch.append(
                "%d,%s,%d,%s,%s,%d.%02d,%d,%d\n"
                % (i, ts, customer, CATEGORIES[cat], CITIES[city],
                   cents // 100, cents % 100, quantity, returned)
            )
            if len(batch) == 10000:
                f.write("".join(batch))
                batch = []
        f.write("".join(batch))


if __name__ == "__main__":
    main()
