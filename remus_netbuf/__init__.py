"""remus-netbuf: network output buffering for Xen Remus (the remus-netbuf-setup hotplug script)."""

__version__ = "0.1.0"
