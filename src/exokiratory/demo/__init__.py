"""The demo collection: real sample images from the wheels, generated scans and graphics,
duplicates and broken files (:mod:`.data`); ``exokiratory demo`` runs it (:mod:`exokiratory.api.demo`)."""
