"""Services operators call: ``vdb.VDBService`` (FAISS) and ``memory.MemoryService``.

Import them from their modules (``from sage.middleware.services.vdb import VDBService``);
this package does not import FAISS until one of them is used.
"""
