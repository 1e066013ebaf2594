from exokiratory.api.cli import main

main()
