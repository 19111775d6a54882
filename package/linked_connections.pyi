# Types for the official import path orchestra_sdk.linked_connections, which orchestra_sdk serves at run time.
from orchestra_sdk import LinkedConnection as LinkedConnection
from orchestra_sdk import get_linked_connection as get_linked_connection
from orchestra_sdk import list_linked_connections as list_linked_connections
