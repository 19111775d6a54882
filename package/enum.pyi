# Types for the official import path orchestra_sdk.enum, which orchestra_sdk serves at run time.
from orchestra_sdk import TaskRunStatus as TaskRunStatus
from orchestra_sdk import WebhookEventType as WebhookEventType
