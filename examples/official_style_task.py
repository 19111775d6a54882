"""A Task that uses only the official orchestra-sdk 0.2.0 API, so it runs unchanged on either package.

Not the official README's text: its pieces (the official import paths, the decorator, manual
updates, an output, a log file, a linked connection, and an AWS Lambda handler called at the
end with an event like the one Orchestra sends) put together in one runnable file. Here it runs
on the single-file orchestra_sdk.py with nothing else installed.
"""

import logging
import os

from orchestra_sdk.enum import TaskRunStatus
from orchestra_sdk.errors import LinkedConnectionNotFoundError
from orchestra_sdk.linked_connections import get_linked_connection
from orchestra_sdk.orchestra import OrchestraSDK

LOG_FILE = os.environ.get("EXAMPLE_LOG_FILE", "orchestra.log")

logger = logging.getLogger("my_task")
logger.setLevel(logging.INFO)
logger.addHandler(logging.FileHandler(LOG_FILE))

orchestra = OrchestraSDK(api_key=os.environ["ORCHESTRA_API_KEY"], log_file=LOG_FILE, send_logs=True)


@orchestra.run()
def my_function(arg1, arg2=1):
    logger.info("Running with %s and %s", arg1, arg2)
    try:
        warehouse = get_linked_connection("snowflake")
        logger.info("Connecting to account %s as %s", warehouse["account"], warehouse["user"])
    except LinkedConnectionNotFoundError as exc:
        logger.info("No warehouse linked: %s", exc)
    orchestra.update_task(status=TaskRunStatus.RUNNING, message="Starting process.")
    orchestra.set_output("rows_processed", 42)
    return arg1 + arg2


def handler(event, context):
    """An AWS Lambda handler: Orchestra puts the task run id and webhook URL in the event."""
    orchestra.configure_aws_lambda_event(event)

    @orchestra.run()
    def lambda_task():
        orchestra.set_output("invocation", "lambda")

    lambda_task()
    return {"statusCode": 200}


if __name__ == "__main__":
    print(my_function(1, arg2=2))
    lambda_event = {
        "orchestra_task_run_id": os.environ["EXAMPLE_LAMBDA_TASK_RUN_ID"],
        "orchestra_webhook_url": os.environ["ORCHESTRA_WEBHOOK_URL"],
    }
    print(handler(lambda_event, None))
