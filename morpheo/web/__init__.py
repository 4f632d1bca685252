"""
The web layer: the routes (Klein), the streaming layer that hands request
bodies to them as streams, uploads and their forms, downloads, Basic auth,
CORS, the access log and the root a host application mounts.  It decodes
requests, calls the domain layer (L{morpheo.objects}) and encodes answers.
"""

from ._accesslog import AccessLogSite
from ._auth import BasicAuth
from ._cors import CORSResource
from ._passwords import PasswordFileChecker, hashPassword
from ._root import StorageRoot
from ._routes import StorageAPI
from ._streaming import BodyAborted, BodyRefused, IStreamingRequest, RequestBody, StreamingSite

__all__ = [
    "AccessLogSite",
    "BasicAuth",
    "BodyAborted",
    "BodyRefused",
    "CORSResource",
    "IStreamingRequest",
    "PasswordFileChecker",
    "RequestBody",
    "StorageAPI",
    "StorageRoot",
    "StreamingSite",
    "hashPassword",
]
