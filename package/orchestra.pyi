# Types for the official import path orchestra_sdk.orchestra, which orchestra_sdk serves at run time.
from orchestra_sdk import OrchestraSDK as OrchestraSDK
