# Types for the official import path orchestra_sdk.check_environment, which orchestra_sdk serves at run time.
from orchestra_sdk import validate_environment as validate_environment
