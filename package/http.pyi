# Types for the official import path orchestra_sdk.http, which orchestra_sdk serves at run time.
from orchestra_sdk import HTTPClient as HTTPClient
