import ArgumentParser

@main
struct Stitch: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stitch",
        abstract: "Compose frozen pretrained models into vision-language pipelines.",
        subcommands: [])
}
