from exokiratory.cli import main

main()
