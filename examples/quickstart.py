"""A small Task that shows what Orchestra sees: statuses, a message, an output and its logs.

Try it on any machine with Python, no Orchestra account needed:

    python orchestra_sdk.py run --local -- python examples/quickstart.py
"""

import logging

from orchestra_sdk import OrchestraSDK

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
log = logging.getLogger("quickstart")

# The API key, task run id and webhook URL come from the environment Orchestra sets
# (`run --local` sets stand-ins). send_logs=True sends what the Task printed and logged.
orchestra = OrchestraSDK(send_logs=True)


@orchestra.run()
def load_orders() -> int:
    orders = [{"id": n, "amount": n * 10} for n in range(1, 43)]
    log.info("loaded %d orders", len(orders))
    orchestra.update_task(message=f"Loaded {len(orders)} orders.")
    orchestra.set_output("rows_loaded", len(orders))
    print(f"total amount: {sum(o['amount'] for o in orders)}")
    return len(orders)


if __name__ == "__main__":
    load_orders()
