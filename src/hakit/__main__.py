from hakit.cli import main

main()
