import time
from datetime import timedelta


async def test_probe(time_skipping):
    t = time.time()
    await time_skipping.sleep(timedelta(hours=1))
    print("slept", time.time() - t)
